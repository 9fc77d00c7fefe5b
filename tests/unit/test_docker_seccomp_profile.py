"""scripts/docker-seccomp-profile: Docker's namespace rules applied to podman's default profile."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "docker-seccomp-profile"
COMMITTED = REPO / "tests" / "support" / "docker-default-seccomp.json"
PODMAN_DEFAULT = Path("/usr/share/containers/seccomp.json")


def _script() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("docker_seccomp_profile", str(SCRIPT))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def _unconditional_allows(profile: dict[str, object]) -> set[str]:
    names: set[str] = set()
    for rule in profile["syscalls"]:  # type: ignore[attr-defined]
        if (
            rule["action"] == "SCMP_ACT_ALLOW"
            and not rule.get("args")
            and not rule.get("includes")
            and not rule.get("excludes")
        ):
            names.update(rule["names"])
    return names


def test_namespace_calls_need_cap_sys_admin() -> None:
    podman = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 38,
        "syscalls": [
            {"names": ["read", "clone", "clone3", "unshare", "setns", "mount"], "action": "SCMP_ACT_ALLOW"},
            {
                "names": ["setns", "sethostname"],
                "action": "SCMP_ACT_ALLOW",
                "includes": {"caps": ["CAP_SYS_ADMIN"]},
            },
        ],
    }
    docker = _script().derive(podman)
    assert _unconditional_allows(docker) == {"read"}
    assert docker["defaultErrnoRet"] == 1
    by_comment = {r.get("comment", ""): r for r in docker["syscalls"]}
    gated = next(r for c, r in by_comment.items() if c.startswith("Docker: namespaces"))
    assert {"clone", "clone3", "unshare", "setns", "mount", "pivot_root"} <= set(gated["names"])
    assert gated["includes"] == {"caps": ["CAP_SYS_ADMIN"]}
    plain_clone = next(r for c, r in by_comment.items() if c == "Docker: clone without namespace flags")
    assert plain_clone["args"][0]["value"] == 0x7E020000 and plain_clone["excludes"]["caps"] == [
        "CAP_SYS_ADMIN"
    ]
    clone3 = next(r for r in docker["syscalls"] if r["names"] == ["clone3"])
    assert (clone3["action"], clone3["errnoRet"]) == ("SCMP_ACT_ERRNO", 38)
    # podman's own CAP_SYS_ADMIN rule keeps what is not a namespace call.
    assert any(r["names"] == ["sethostname"] for r in docker["syscalls"])


@pytest.mark.skipif(not PODMAN_DEFAULT.is_file(), reason="containers-common's seccomp.json not installed")
def test_the_committed_profile_is_what_the_script_makes() -> None:
    expected = _script().render(json.loads(PODMAN_DEFAULT.read_text()))
    assert COMMITTED.read_text() == expected, "re-run scripts/docker-seccomp-profile"
