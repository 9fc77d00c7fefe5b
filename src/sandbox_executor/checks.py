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

from . import isolation
from .config import Settings
from .errors import SandboxStartError
from .host import HostProfile
from .models import ExecuteRequest, ExecutionResult


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str
    remedy: str = ""
    # More lines worth an operator's eye, also when ok (what an isolation level gives up).
    notes: tuple[str, ...] = ()


def _drop_privileges(settings: Settings) -> dict[str, Any]:
    if settings.runs_as_root:
        uid, gid = settings.sandbox_ids()
        return {"user": uid, "group": gid, "extra_groups": []}
    return {}


def bwrap_remedy(error: str) -> str:
    """The operator's fix for a bwrap failure, from bwrap's own message."""
    return isolation.bwrap_remedy(error)


def check_isolation(host: HostProfile) -> CheckResult:
    """The level sandboxes run at: what it gives up, what the next level up lacks, the fix."""
    decision, facts = host.isolation, host.facts
    level = host.level
    abi = f"Landlock ABI {facts.landlock_abi}" if facts.landlock_abi else "no Landlock"
    notes = tuple(f"gives up: {item}" for item in decision.given_up)
    notes += tuple(f"missing for the next level up: {item}" for item in decision.missing)
    if level != "none" and not host.seccomp_active:
        # At the landlock level the filter is also what refuses every socket but AF_UNIX.
        notes += ("gives up: the seccomp filter (SECCOMP_ENABLED=false or no libseccomp): diagnosis only",)
    if level == "none":
        detail = "none: user code runs WITHOUT a sandbox (SANDBOX_ISOLATION=none, development only)"
    else:
        detail = f"{level} ({abi}; seccomp filter {'on' if host.seccomp_active else 'OFF'})"
    return CheckResult("isolation", True, detail, decision.remedy, notes)


def isolation_refused(error: SandboxStartError) -> CheckResult:
    return CheckResult("isolation", False, error.description, error.solution)


def check_sandbox(settings: Settings, host: HostProfile) -> CheckResult:
    """A real sandbox runs at the chosen level: the engine's own launch, the sandbox user,
    the seccomp filter, on a private scratch workspace."""
    try:
        result = _run_probe_sandbox(settings, host)
    except Exception as exc:
        return CheckResult("sandbox", False, f"cannot start a test sandbox: {exc}", _remedy(host, str(exc)))
    if result.status == "success" and result.stdout.strip() == "sandbox-ok":
        uid, _ = settings.sandbox_ids()
        return CheckResult("sandbox", True, f"ran a test sandbox at level {host.level} as uid {uid}")
    err = (result.stderr or result.error or result.stdout).strip()[-400:]
    return CheckResult(
        "sandbox",
        False,
        f"a test sandbox failed ({result.status}, exit {result.exit_code}): {err}",
        _remedy(host, err),
    )


def _remedy(host: HostProfile, error: str) -> str:
    if host.uses_bwrap:
        return bwrap_remedy(error)
    return "read docs/OPERATIONS.md (the landlock level); SANDBOX_ISOLATION=none only to diagnose"


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


def check_run_guards(settings: Settings) -> list[CheckResult]:
    """Which per-run bounds this host gives (RUN_BOUNDS_MECHANISM), and how the workspace
    write cap is measured; a mechanism named in the settings that cannot work fails."""
    from .run_bounds import BoundsUnavailable
    from .run_guards import RunGuards

    try:
        guards = RunGuards.detect(settings)
    except BoundsUnavailable as exc:
        remedy = "set RUN_BOUNDS_MECHANISM=auto, or give the daemon the cgroup it names"
        return [CheckResult("memory_bounds", False, exc.description, remedy)]
    try:
        described = guards.describe()
    finally:
        guards.close()
    memory = described["memory_bounds"]
    results = [CheckResult("memory_bounds", True, f"{memory['mechanism']} ({memory['detail']})")]
    writes = described.get("workspace_writes")
    if writes is not None:
        limit = f"{settings.max_workspace_write_mb} MiB per run"
        results.append(
            CheckResult("workspace_writes", True, f"{limit}, {writes['mode']}: {writes['detail']}")
        )
    return results


def run_checks(
    settings: Settings, host: HostProfile | None = None, *, include_results_dir: bool = True
) -> list[CheckResult]:
    """Every start-up check, in order (``host``: the daemon's own probe, else a fresh one)."""
    results: list[CheckResult] = []
    if host is None:
        try:
            host = HostProfile.probe(settings)
        except SandboxStartError as exc:
            results.append(isolation_refused(exc))
    if host is not None:
        results += [check_isolation(host), check_sandbox(settings, host)]
    results += [check_workspace(settings), *check_interpreters(settings)]
    if include_results_dir:
        results.append(check_dirs(settings))
    return results
