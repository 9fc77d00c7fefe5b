"""The container settings the image is tested under, as data.

Most are the control plane's own (docs/CONTRACT.md section 4): what its Docker and
Kubernetes schedulers really create. ``hardened`` is ours (deploy/kubernetes: the shipped
seccomp profile and an unmasked /proc), the only one that gets the full ``bwrap`` level
without privileges.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUR_SECCOMP = ROOT / "deploy" / "kubernetes" / "seccomp" / "sandbox-executor.json"
DOCKER_SECCOMP = ROOT / "tests" / "support" / "docker-default-seccomp.json"
POD_SPEC = ROOT / "tests" / "support" / "control-plane-pod.yaml"

# The control plane's start script for session containers, run as root from /app.
DROPIN_SCRIPT = (
    "set -e; cd /app; export PYTHONPATH=/app:${PYTHONPATH:-}; "
    "exec gosu sandbox bash -c 'cd /app && exec python -m executor.interfaces.http.rest'"
)

UNPRIVILEGED = ("--user", "1000:1000", "--cap-drop=ALL", "--security-opt", "no-new-privileges")


@dataclass(frozen=True)
class Setting:
    name: str
    expected_level: str
    about: str
    options: tuple[str, ...] = ()  # podman run options before the image
    command: tuple[str, ...] = ()  # after the image (the drop-in start script)
    env: tuple[tuple[str, str], ...] = ()
    kube: bool = False  # podman kube play of POD_SPEC instead of podman run
    dependency_sync: bool = False
    # Processes dropped to 1000 by gosu keep the bounding set and may lack no_new_privs.
    strict_privileges: bool = True
    # No sandbox on purpose: every attack must be seen to succeed (the checks can fail).
    control: bool = False


HARDENED = Setting(
    "hardened",
    "bwrap",
    "ours: deploy/kubernetes seccomp profile, /proc unmasked, read-only root",
    options=(
        "--cap-drop=ALL",
        "--security-opt",
        "no-new-privileges",
        "--security-opt",
        f"seccomp={OUR_SECCOMP}",
        "--security-opt",
        "unmask=/proc/*",
        "--read-only",
        "--tmpfs",
        "/workspace:rw,exec,U",
        "--tmpfs",
        "/var/lib/sandbox-executor:rw,U",
        "--tmpfs",
        "/opt:rw,exec,U",  # SANDBOX_VENV_PATH=/opt/sandbox-venv + /opt/sandbox-venv.d
    ),
    dependency_sync=True,
)

DOCKER = Setting(
    "docker",
    "landlock",
    "Docker scheduler: Docker's default seccomp, uid 1000, caps dropped, no-new-privileges",
    options=(*UNPRIVILEGED, "--security-opt", f"seccomp={DOCKER_SECCOMP}"),
)

DOCKER_NO_BWRAP = Setting(
    "docker-nobwrap",
    "landlock",
    "the same with the control plane's DISABLE_BWRAP=true, /tmp a 512 MB tmpfs (Docker's "
    "default options), a dependency sync",
    options=(
        *UNPRIVILEGED,
        "--security-opt",
        f"seccomp={DOCKER_SECCOMP}",
        "--tmpfs",
        "/tmp:rw,nosuid,nodev,noexec,size=512m",
    ),
    env=(("DISABLE_BWRAP", "true"),),
    dependency_sync=True,
)

POD = Setting(
    "pod",
    "bwrap-compat",
    "plain Kubernetes pod via podman run: podman's default seccomp, masked /proc, uid 1000, "
    "caps dropped, no-new-privileges",
    options=UNPRIVILEGED,
)

KUBE = Setting(
    "kube",
    "bwrap-compat",
    "the control plane's Kubernetes pod spec through podman kube play",
    kube=True,
)

# Without a seccompProfile a pod is Unconfined unless the kubelet runs --seccomp-default.
POD_UNCONFINED = Setting(
    "pod-unconfined",
    "bwrap-compat",
    "plain Kubernetes pod on a node without a default seccomp profile (Unconfined): masked "
    "/proc, uid 1000, caps dropped, no-new-privileges",
    options=(*UNPRIVILEGED, "--security-opt", "seccomp=unconfined"),
)

DROPIN = Setting(
    "dropin",
    "bwrap",
    "the control plane's start script (root, gosu sandbox) under our seccomp profile, /proc unmasked",
    options=(
        "--user",
        "0:0",
        "--security-opt",
        f"seccomp={OUR_SECCOMP}",
        "--security-opt",
        "unmask=/proc/*",
        "--entrypoint",
        "/bin/bash",
    ),
    command=("-c", DROPIN_SCRIPT),
    env=(("WORKSPACE_PATH", "s3://bucket/sessions/it-dropin"), ("DISABLE_BWRAP", "false")),
    dependency_sync=True,
    strict_privileges=False,
)

S3_DOCKER = Setting(
    "s3-docker",
    "bwrap-compat",
    "Docker scheduler, S3 workspace: root + CAP_SYS_ADMIN + /dev/fuse, Docker's default "
    "seccomp, then the start script's gosu",
    options=(
        "--user",
        "0:0",
        "--cap-add",
        "SYS_ADMIN",
        "--device",
        "/dev/fuse",
        "--security-opt",
        f"seccomp={DOCKER_SECCOMP}",
        "--entrypoint",
        "/bin/bash",
    ),
    command=("-c", DROPIN_SCRIPT),
    env=(("WORKSPACE_PATH", "s3://bucket/sessions/it-s3"), ("DISABLE_BWRAP", "false")),
    strict_privileges=False,
)

S3_KUBE = Setting(
    "s3-kube",
    "bwrap",
    "Kubernetes scheduler, S3 workspace: privileged root, then the start script's gosu",
    options=("--user", "0:0", "--privileged", "--entrypoint", "/bin/bash"),
    command=("-c", DROPIN_SCRIPT),
    env=(("WORKSPACE_PATH", "s3://bucket/sessions/it-s3"), ("DISABLE_BWRAP", "false")),
    strict_privileges=False,
)

CONTROL_NONE = Setting(
    "control-none",
    "none",
    "negative control: SANDBOX_ISOLATION=none under the Docker settings, where every attack "
    "must be seen to succeed",
    options=DOCKER.options,
    env=(("SANDBOX_ISOLATION", "none"),),
    control=True,
)

ALL: tuple[Setting, ...] = (
    HARDENED,
    DOCKER,
    DOCKER_NO_BWRAP,
    POD,
    KUBE,
    POD_UNCONFINED,
    DROPIN,
    S3_DOCKER,
    S3_KUBE,
    CONTROL_NONE,
)
