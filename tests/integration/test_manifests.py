"""The Kubernetes manifests, the seccomp profile and the Dockerfile agree with each other.

Schema validation (kubernetes-validate, strict: unknown fields are errors) against the
oldest Kubernetes release the manifests target and the newest the validator knows, then the
properties the executor's safety rests on, which a schema cannot see.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml  # type: ignore[import-untyped]

from sandbox_executor.config import Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
PROFILE = K8S / "seccomp" / "sandbox-executor.json"
PODMAN_DEFAULT = Path("/usr/share/containers/seccomp.json")
# hostUsers + procMount: Unmasked need user-namespaced pods: on by default from 1.33.
MIN_VERSION = "1.33.0"
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
# Variables of docs/CONTRACT.md section 3 that are not executor settings but are legitimately set.
CONTRACT_ONLY_ENV = {"SESSION_ID", "PYTHONPATH"}


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def all_documents() -> list[tuple[str, dict[str, Any]]]:
    return [(f"{p.name}:{d['kind']}", d) for p in MANIFESTS for d in documents(p)]


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = doc["spec"] if doc["kind"] == "Pod" else doc["spec"]["template"]["spec"]
    return spec


def executor_pods() -> list[tuple[str, dict[str, Any]]]:
    """(name, pod spec) of every workload that runs the executor image."""
    found = []
    for name, doc in all_documents():
        if doc["kind"] in ("Pod", "Deployment", "StatefulSet"):
            spec = pod_spec(doc)
            if any("sandbox-executor" in c["image"] for c in spec["containers"]):
                found.append((name, spec))
    return found


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("seccomp_generate", K8S / "seccomp" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_there_is_something_to_validate() -> None:
    names = {p.name for p in MANIFESTS}
    assert {"session-pod.yaml", "deployment.yaml", "seccomp-installer.yaml", "namespace.yaml"} <= names
    assert len(executor_pods()) == 2


@pytest.mark.parametrize("version", [MIN_VERSION, kubernetes_validate.latest_version() + ".0"])
@pytest.mark.parametrize("name,doc", all_documents(), ids=[n for n, _ in all_documents()])
def test_manifest_validates_strictly(name: str, doc: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(doc, version, strict=True)


def test_validator_rejects_a_broken_manifest() -> None:
    """The validation above is not vacuous: a misspelt field is an error."""
    doc = documents(K8S / "session-pod.yaml")[0]
    doc["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesytem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, MIN_VERSION, strict=True)


def test_kustomization_references_existing_files() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file(), resource
    for generator in kustomization["configMapGenerator"]:
        for file in generator["files"]:
            assert (K8S / file).is_file(), file
    installer = documents(K8S / "seccomp-installer.yaml")[0]
    config_maps = {v["configMap"]["name"] for v in pod_spec(installer)["volumes"] if "configMap" in v}
    generated = {(g["name"], g.get("namespace")) for g in kustomization["configMapGenerator"]}
    assert {(name, installer["metadata"]["namespace"]) for name in config_maps} <= generated
    host_paths = [v["hostPath"]["path"] for v in pod_spec(installer)["volumes"] if "hostPath" in v]
    assert host_paths == ["/var/lib/kubelet/seccomp"]


@pytest.mark.parametrize("name,spec", executor_pods(), ids=[n for n, _ in executor_pods()])
def test_executor_pod_is_confined(name: str, spec: dict[str, Any]) -> None:
    pod_sc = spec["securityContext"]
    assert pod_sc["runAsNonRoot"] is True
    assert pod_sc["runAsUser"] == 1000 and pod_sc["runAsGroup"] == 1000
    assert spec["automountServiceAccountToken"] is False
    assert spec.get("hostNetwork", False) is False and spec.get("hostPID", False) is False
    seccomp = pod_sc["seccompProfile"]
    assert seccomp["type"] == "Localhost"
    assert seccomp["localhostProfile"] == PROFILE.name
    assert 10 <= spec["terminationGracePeriodSeconds"] <= 120
    (container,) = spec["containers"]
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc.get("privileged", False) is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    # The API server refuses Unmasked unless the pod has its own user namespace.
    if sc.get("procMount") == "Unmasked":
        assert spec["hostUsers"] is False
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind])
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == "/health" and get["port"] in ("http", 8080), probe
    assert "preStop" not in container.get("lifecycle", {})  # shutdown is the daemon's SIGTERM path


@pytest.mark.parametrize("name,spec", executor_pods(), ids=[n for n, _ in executor_pods()])
def test_every_written_path_is_a_volume(name: str, spec: dict[str, Any]) -> None:
    """With a read-only root, each directory the daemon or the sandboxes write is mounted."""
    (container,) = spec["containers"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    image_env = dockerfile_env()
    workspace = env.get("WORKSPACE_PATH") or image_env["WORKSPACE_PATH"]
    results = Path(env.get("RESULTS_DIR") or image_env["RESULTS_DIR"])
    default_venv = str(Settings.model_fields["sandbox_venv_path"].default)
    venv = env.get("SANDBOX_VENV_PATH") or image_env.get("SANDBOX_VENV_PATH") or default_venv
    # SANDBOX_VENV_PATH is a symlink the daemon replaces atomically beside "<path>.d": the
    # directory holding it must be writable, not just the path.
    for path in (workspace, str(results.parent), str(Path(venv).parent), "/tmp"):
        assert path in mounts, f"{path} is written but not mounted"
        assert "emptyDir" in volumes[mounts[path]] or "persistentVolumeClaim" in volumes[mounts[path]]


@pytest.mark.parametrize("name,spec", executor_pods(), ids=[n for n, _ in executor_pods()])
def test_env_names_are_real_settings(name: str, spec: dict[str, Any]) -> None:
    """A misspelt variable is silently ignored by the daemon: catch it here."""
    known = {field.upper() for field in Settings.model_fields} | CONTRACT_ONLY_ENV
    (container,) = spec["containers"]
    for item in container.get("env", []):
        assert item["name"] in known, item["name"]


def dockerfile_env() -> dict[str, str]:
    text = (ROOT / "Dockerfile").read_text()
    env: dict[str, str] = {}
    for block in re.findall(r"^ENV ((?:.*\\\n)*.*)$", text, flags=re.M):
        for name, value in re.findall(r"([A-Z_]+)=(\S+)", block.replace("\\\n", " ")):
            env[name] = value
    return env


def test_dockerfile_matches_the_manifests() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)", text, flags=re.M)
    assert stages and all(s == "docker.io/library/debian:bookworm-slim" for s in stages)
    final = text.rsplit("\nFROM ", 1)[1]
    assert re.search(r"^USER 1000:1000$", final, flags=re.M)
    assert re.search(r"^EXPOSE 8080$", final, flags=re.M)
    assert "HEALTHCHECK" in final and "/health" in final
    env = dockerfile_env()
    assert env["EXECUTOR_HOST"] == "0.0.0.0" and env["EXECUTOR_PORT"] == "8080"
    assert env["PYTHON_BINARY"] == "/usr/bin/python3"
    # The daemon's virtualenv must stay outside what a sandbox binds (/usr, /lib*, /bin, /etc).
    venv_bin = env["PATH"].split(":")[0]
    assert venv_bin.endswith("/venv/bin")
    assert not venv_bin.startswith(("/usr", "/lib", "/bin", "/sbin", "/etc", "/opt", "/workspace"))
    for name in env:
        assert (
            name.lower() in Settings.model_fields
            or name
            in {
                "PATH",
                "PYTHONUNBUFFERED",
                "PYTHONDONTWRITEBYTECODE",
            }
            or name.startswith(("PIP_", "UV_", "SSL_"))
        ), name
    # apt packages pinned (name=version), the Python side comes from uv.lock with --frozen.
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    installs = re.findall(r"apt-get install((?:[^\n&]*\\\n)*[^\n&]*)", code)
    assert installs
    for install in installs:
        for word in install.split():
            if re.match(r"^[a-z0-9][a-z0-9.+-]+$", word) and word not in ("apt-get", "install"):
                pytest.fail(f"unpinned apt package {word!r}")
    assert "UV_FROZEN=1" in text


def test_seccomp_profile_allows_what_bwrap_needs_and_no_more() -> None:
    profile = json.loads(PROFILE.read_text())
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
    unconditional: set[str] = set()
    gated: set[str] = set()
    for rule in profile["syscalls"]:
        if rule["action"] != "SCMP_ACT_ALLOW" or rule.get("args"):
            continue
        if rule.get("includes", {}).get("caps") or rule.get("excludes", {}).get("caps"):
            gated.update(rule["names"])
        elif not rule.get("includes") or rule["includes"].get("arches"):
            unconditional.update(rule["names"])
    needed = {
        "unshare",
        "clone",
        "clone3",
        "mount",
        "umount2",
        "pivot_root",
        "sethostname",
        "setdomainname",
        "seccomp",
        "prctl",
        "capset",
    }
    assert needed <= unconditional, needed - unconditional
    # Host-level powers stay behind their capabilities (which the pod does not have).
    for call in ("kexec_load", "init_module", "bpf", "perf_event_open", "open_by_handle_at"):
        assert call not in unconditional, call


@pytest.mark.skipif(not PODMAN_DEFAULT.is_file(), reason="containers-common's seccomp.json not installed")
def test_seccomp_profile_is_podman_default_plus_uts() -> None:
    """The shipped file is exactly what generate.py makes from containers-common's default."""
    generator = load_generator()
    expected = generator.derive(json.loads(PODMAN_DEFAULT.read_text()))
    assert json.loads(PROFILE.read_text()) == expected, "re-run deploy/kubernetes/seccomp/generate.py"


def test_seccomp_generator_moves_only_the_uts_calls() -> None:
    generator = load_generator()
    source: dict[str, Any] = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [
            {"names": ["read", "sethostname"], "action": "SCMP_ACT_ALLOW", "args": []},
            {
                "names": ["bpf", "sethostname", "setns"],
                "action": "SCMP_ACT_ALLOW",
                "includes": {"caps": ["CAP_SYS_ADMIN"]},
                "excludes": {},
            },
            {
                "names": ["bpf", "setdomainname"],
                "action": "SCMP_ACT_ERRNO",
                "includes": {},
                "excludes": {"caps": ["CAP_SYS_ADMIN"]},
            },
        ],
    }
    out = generator.derive(source)
    assert out["syscalls"][0]["names"] == ["read", "sethostname"]
    assert out["syscalls"][1]["names"] == ["bpf", "setns"]
    assert out["syscalls"][2]["names"] == ["bpf"]
    assert out["syscalls"][-1]["names"] == ["sethostname", "setdomainname"]
    assert out["syscalls"][-1]["action"] == "SCMP_ACT_ALLOW"
    assert source["syscalls"][1]["names"] == ["bpf", "sethostname", "setns"]  # input untouched
