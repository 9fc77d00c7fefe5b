"""Start-up checks: can this host really run sandboxes? Each failure names its remedy."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import shutil
import subprocess
import tempfile
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import Settings
from .host import HostProfile
from .models import ExecuteRequest, ExecutionResult


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str
    remedy: str = ""


def _drop_privileges(settings: Settings) -> dict[str, Any]:
    if settings.runs_as_root:
        uid, gid = settings.sandbox_ids()
        return {"user": uid, "group": gid, "extra_groups": []}
    return {}


_USERNS_REMEDY = (
    "unprivileged user namespaces are unavailable here: enable them "
    "(sysctl -w kernel.unprivileged_userns_clone=1 where that sysctl exists, and "
    "user.max_user_namespaces > 0; on Ubuntu 23.10+ also "
    "kernel.apparmor_restrict_unprivileged_userns=0 or an AppArmor profile for bwrap). "
    "In a container, use a seccomp profile that allows unshare/clone with namespace flags "
    "(podman's default does, Docker's default does not: run with "
    "--security-opt seccomp=<profile> or seccomp=unconfined) and --security-opt "
    "systempaths=unconfined (Kubernetes: procMount: Unmasked) so bwrap can mount /proc"
)


def bwrap_remedy(error: str) -> str:
    """The operator's fix for a bwrap failure, from bwrap's own message."""
    lowered = error.lower()
    # Checked first: this message also ends in "Operation not permitted".
    if "mount proc" in lowered:
        return (
            "bwrap cannot mount a fresh /proc: run the container with --security-opt "
            "systempaths=unconfined (Kubernetes: securityContext.procMount: Unmasked)"
        )
    if any(
        needle in lowered
        for needle in (
            "no permissions to creat",
            "creating new namespace failed",
            "setting up uid map",
            "uid map",
            "no space left on device",  # user.max_user_namespaces exhausted or 0
            "operation not permitted",
        )
    ):
        return _USERNS_REMEDY
    if "seccomp" in lowered:
        return "the kernel refused the seccomp filter: set SECCOMP_ENABLED=false only to diagnose"
    if "can't find source path" in lowered:
        return "a path bound into the sandbox is missing or unreadable by the sandbox user"
    return "run the failing bwrap command by hand (see the detail) and read docs/OPERATIONS.md"


def check_bwrap(settings: Settings, host: HostProfile | None = None) -> CheckResult:
    """bwrap exists and really runs a sandbox here: the engine's own command line, the
    sandbox user, the seccomp filter, on a private scratch workspace."""
    if settings.disable_bwrap:
        return CheckResult("bwrap", True, "DISABLE_BWRAP=true: isolation is off (development only)")
    bwrap = shutil.which(settings.bwrap_path)
    if bwrap is None:
        return CheckResult(
            "bwrap",
            False,
            f"{settings.bwrap_path!r} not found",
            "install it: apt-get install -y bubblewrap (or set BWRAP_PATH)",
        )
    try:
        result = _run_probe_sandbox(settings, host or HostProfile.probe(settings))
    except Exception as exc:
        return CheckResult("bwrap", False, f"cannot start a test sandbox: {exc}", bwrap_remedy(str(exc)))
    if result.status == "success" and result.stdout.strip() == "sandbox-ok":
        uid, _ = settings.sandbox_ids()
        return CheckResult(
            "bwrap",
            True,
            f"{bwrap} ran a test sandbox as uid {uid} (user, pid, net, ipc, uts, mount namespaces)",
        )
    err = (result.stderr or result.error or result.stdout).strip()[-400:]
    return CheckResult(
        "bwrap",
        False,
        f"a test sandbox failed ({result.status}, exit {result.exit_code}): {err}",
        bwrap_remedy(err),
    )


def _run_probe_sandbox(settings: Settings, host: HostProfile) -> ExecutionResult:
    from .engine import Engine
    from .sandbox import SandboxFactory
    from .spawner import Spawner

    scratch = tempfile.mkdtemp(prefix="sandbox-check-")
    try:
        if settings.runs_as_root:
            os.chown(scratch, *settings.sandbox_ids())
        probe = settings.model_copy(update={"workspace_path": scratch, "warm_pool_size": 0})
        probe.__dict__.pop("workspace_dir", None)  # a cached_property of the original
        request = ExecuteRequest(
            execution_id="startup-check", code="echo sandbox-ok", language="shell", timeout=30
        )
        engine = Engine(probe, SandboxFactory(probe, host, Spawner(probe.python_binary)))
        return _run_coroutine(engine.execute_once(request))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run_coroutine(coro: Coroutine[Any, Any, ExecutionResult]) -> ExecutionResult:
    """Run ``coro`` to completion, also when the caller already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def check_workspace(settings: Settings) -> CheckResult:
    """The workspace exists and the sandbox user can create files in it."""
    workspace = Path(settings.workspace_dir)
    if not workspace.is_dir():
        return CheckResult(
            "workspace",
            False,
            f"{workspace} is not a directory",
            f"create it: mkdir -p {workspace} (and mount the session's storage there)",
        )
    uid, gid = settings.sandbox_ids()
    script = "import os,sys,tempfile; fd,p=tempfile.mkstemp(dir=sys.argv[1]); os.close(fd); os.unlink(p)"
    try:
        proc = subprocess.run(
            [settings.python_binary, "-I", "-S", "-c", script, str(workspace)],
            capture_output=True,
            timeout=20,
            check=False,
            **_drop_privileges(settings),
        )
        ok = proc.returncode == 0
    except (OSError, subprocess.SubprocessError):
        ok = os.access(workspace, os.W_OK)
    if ok:
        return CheckResult("workspace", True, f"{workspace} is writable by uid {uid}")
    return CheckResult(
        "workspace",
        False,
        f"{workspace} is not writable by the sandbox user (uid {uid})",
        f"chown {uid}:{gid} {workspace} (or set SANDBOX_UID/SANDBOX_GID)",
    )


def check_interpreters(settings: Settings) -> list[CheckResult]:
    results = []
    interpreters = (
        ("python", settings.python_binary),
        ("node", settings.node_binary),
        ("bash", settings.bash_binary),
    )
    for name, path in interpreters:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            results.append(CheckResult(name, True, path))
        else:
            package = {"python": "python3", "node": "nodejs", "bash": "bash"}[name]
            remedy = f"apt-get install -y {package} (or set {name.upper()}_BINARY)"
            results.append(CheckResult(name, False, f"{path} not found", remedy))
    return results


def check_dirs(settings: Settings) -> CheckResult:
    try:
        settings.results_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=settings.results_dir):
            pass
    except OSError as exc:
        return CheckResult(
            "results_dir",
            False,
            f"{settings.results_dir}: {exc}",
            "set RESULTS_DIR to a directory the daemon can write",
        )
    return CheckResult("results_dir", True, str(settings.results_dir))


def run_checks(
    settings: Settings, host: HostProfile | None = None, *, include_results_dir: bool = True
) -> list[CheckResult]:
    """Every start-up check, in order (``host``: the daemon's own probe, else a fresh one)."""
    results = [check_bwrap(settings, host), check_workspace(settings), *check_interpreters(settings)]
    if include_results_dir:
        results.append(check_dirs(settings))
    return results
