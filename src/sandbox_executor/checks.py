"""Start-up checks: can this host really run sandboxes? Each failure names its remedy."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .config import Settings


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str
    remedy: str = ""


def _drop_privileges(settings: Settings) -> dict[str, object]:
    if settings.runs_as_root:
        uid, gid = settings.sandbox_ids()
        return {"user": uid, "group": gid, "extra_groups": []}
    return {}


def check_bwrap(settings: Settings) -> CheckResult:
    """bwrap exists and can create every namespace we ask for, as the sandbox user."""
    if settings.disable_bwrap:
        return CheckResult("bwrap", True, "DISABLE_BWRAP=true: isolation is off (development only)")
    bwrap = shutil.which(settings.bwrap_path)
    if bwrap is None:
        return CheckResult(
            "bwrap", False, f"{settings.bwrap_path!r} not found",
            "install it: apt-get install -y bubblewrap (or set BWRAP_PATH)",
        )
    argv = [
        bwrap, "--unshare-all", "--unshare-user", "--die-with-parent", "--new-session",
        "--cap-drop", "ALL", "--ro-bind", "/usr", "/usr", "--proc", "/proc", "--dev", "/dev",
        "--tmpfs", "/tmp",
    ]
    for link in ("/bin", "/lib", "/lib64"):
        if os.path.islink(link):
            argv += ["--symlink", os.readlink(link), link]
        elif os.path.isdir(link):
            argv += ["--ro-bind", link, link]
    argv += ["--", "/bin/sh", "-c", "echo sandbox-ok"]
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=20, check=False, **_drop_privileges(settings)  # type: ignore[arg-type]
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return CheckResult("bwrap", False, f"cannot run bwrap: {exc}", "check that bwrap is executable")
    if proc.returncode == 0 and "sandbox-ok" in proc.stdout:
        return CheckResult("bwrap", True, f"{bwrap} created user, pid, net, ipc, uts and mount namespaces")
    err = (proc.stderr or proc.stdout).strip()[-400:]
    remedy = "see docs/OPERATIONS.md (failure modes)"
    lowered = err.lower()
    if "no permissions to creat" in lowered or "operation not permitted" in lowered or "setting up uid map" in lowered:
        remedy = (
            "unprivileged user namespaces are unavailable: enable them "
            "(sysctl -w kernel.unprivileged_userns_clone=1 and user.max_user_namespaces>0; "
            "on Ubuntu 24.04 also kernel.apparmor_restrict_unprivileged_userns=0), and in a "
            "container use a seccomp profile that allows unshare/clone with namespace flags "
            "(podman's default does, Docker's does not) and --security-opt unmask=/proc/*"
        )
    elif "proc" in lowered:
        remedy = "bwrap cannot mount /proc: run the container with --security-opt unmask=/proc/* (procMount: Unmasked)"
    return CheckResult("bwrap", False, f"a test sandbox failed (exit {proc.returncode}): {err}", remedy)


def check_workspace(settings: Settings) -> CheckResult:
    """The workspace exists and the sandbox user can create files in it."""
    workspace = Path(settings.workspace_dir)
    if not workspace.is_dir():
        return CheckResult(
            "workspace", False, f"{workspace} is not a directory",
            f"create it: mkdir -p {workspace} (and mount the session's storage there)",
        )
    uid, gid = settings.sandbox_ids()
    script = "import os,sys,tempfile; fd,p=tempfile.mkstemp(dir=sys.argv[1]); os.close(fd); os.unlink(p)"
    try:
        proc = subprocess.run(
            [settings.python_path, "-I", "-S", "-c", script, str(workspace)],
            capture_output=True, timeout=20, check=False, **_drop_privileges(settings),  # type: ignore[arg-type]
        )
        ok = proc.returncode == 0
    except (OSError, subprocess.SubprocessError):
        ok = os.access(workspace, os.W_OK)
    if ok:
        return CheckResult("workspace", True, f"{workspace} is writable by uid {uid}")
    return CheckResult(
        "workspace", False, f"{workspace} is not writable by the sandbox user (uid {uid})",
        f"chown {uid}:{gid} {workspace} (or set SANDBOX_UID/SANDBOX_GID)",
    )


def check_interpreters(settings: Settings) -> list[CheckResult]:
    results = []
    for name, path in (("python", settings.python_path), ("node", settings.node_path), ("bash", settings.bash_path)):
        if os.path.isfile(path) and os.access(path, os.X_OK):
            results.append(CheckResult(name, True, path))
        else:
            package = {"python": "python3", "node": "nodejs", "bash": "bash"}[name]
            results.append(
                CheckResult(name, False, f"{path} not found", f"apt-get install -y {package} (or set {name.upper()}_PATH)")
            )
    return results


def check_dirs(settings: Settings) -> CheckResult:
    try:
        settings.results_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=settings.results_dir):
            pass
    except OSError as exc:
        return CheckResult(
            "results_dir", False, f"{settings.results_dir}: {exc}",
            "set RESULTS_DIR to a directory the daemon can write",
        )
    return CheckResult("results_dir", True, str(settings.results_dir))


def run_checks(settings: Settings, include_results_dir: bool = True) -> list[CheckResult]:
    """Every start-up check, in order."""
    results = [check_bwrap(settings), check_workspace(settings), *check_interpreters(settings)]
    if include_results_dir:
        results.append(check_dirs(settings))
    return results
