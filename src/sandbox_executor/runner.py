"""Spawning sandboxes, enforcing limits and timeouts, and turning a run into a result.

A :class:`Sandbox` is started before it knows its request (bwrap + interpreter + bootstrap,
blocked reading its input pipe) and serves exactly one execution. The cold path starts one
and hands over at once; the warm pool (``pool.py``) starts them ahead of time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from . import artifacts
from .capture import BoundedCapture, capture_fd
from .config import MIB, Settings
from .models import (
    ExecuteRequest,
    ExecutionResult,
    Language,
    Metrics,
    Status,
    TerminationReason,
    json_problem,
)
from .runtimes import (
    STARTED_MARKER,
    LaunchJob,
    base_environment,
    interpreter_command,
    launch_message,
    uses_result_channel,
)
from .sandbox import Mount, SandboxSpec, build_bwrap_argv
from .spawner import Spawner

log = structlog.get_logger(__name__)

# Markers interpreters print when an allocation fails under the memory rlimit.
_MEMORY_MARKERS = (
    "JavaScript heap out of memory",
    "Fatal process out of memory",
    "Allocation failed",
    "xmalloc: cannot allocate",
    "xrealloc: cannot allocate",
    "Cannot allocate memory",
    "MemoryError",
)
_MEMORY_MARKER_WINDOW = 8192
TIMEOUT_MESSAGE = "Execution timeout after {seconds} seconds"
_KILL_GRACE_SECONDS = 0.5


@dataclass(frozen=True)
class Limits:
    """Resource limits applied to one sandbox's process tree."""

    memory_bytes: int
    pids: int
    file_size_bytes: int
    open_files: int
    cpu_seconds: int
    # RLIMIT_NPROC of bwrap itself. The kernel counts a uid's processes per user
    # namespace, and checks every ancestor level against the rlimit its creator had: this
    # value caps all sandboxes together (room for every concurrent one), while each
    # sandbox's init lowers its own rlimit to ``pids`` inside its namespace (runtimes.py),
    # so one fork bomb cannot starve the sandboxes running beside it.
    pids_total: int = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        cpu = settings.cpu_time_limit_seconds or (settings.max_timeout_seconds * 2 + 10)
        # The pool keeps warm_pool_size sandboxes per language (three languages).
        slots = settings.max_concurrent_executions + 3 * settings.warm_pool_size + 1
        return cls(
            memory_bytes=settings.memory_limit_mb * MIB,
            pids=settings.pids_limit,
            file_size_bytes=settings.max_file_size_mb * MIB,
            open_files=settings.max_open_files,
            cpu_seconds=cpu,
            pids_total=settings.pids_limit * slots,
        )


def _rlimits(limits: Limits, nproc: int) -> list[tuple[int, int, int]]:
    """The rlimits set between fork and exec, after the uid switch, on bwrap and all below.

    RLIMIT_DATA (not AS) so node can reserve its address space while real allocations stay
    capped. SIGKILL follows SIGXCPU by one second: the sandbox's init ignores SIGXCPU
    (default actions of kernel signals do not apply to a PID namespace's init).
    """
    return [
        (resource.RLIMIT_DATA, limits.memory_bytes, limits.memory_bytes),
        (resource.RLIMIT_NPROC, nproc, nproc),
        (resource.RLIMIT_FSIZE, limits.file_size_bytes, limits.file_size_bytes),
        (resource.RLIMIT_NOFILE, limits.open_files, limits.open_files),
        (resource.RLIMIT_CPU, limits.cpu_seconds, limits.cpu_seconds + 1),
        (resource.RLIMIT_CORE, 0, 0),
    ]


class SandboxStartError(RuntimeError):
    """bwrap could not be started at all."""


class Sandbox:
    """One started sandbox, waiting on its input pipe for exactly one execution."""

    def __init__(self, language: Language, settings: Settings, limits: Limits) -> None:
        self.language = language
        self.settings = settings
        self.limits = limits
        self.pid: int | None = None
        self.started_at = time.monotonic()
        self._input_w: int | None = None
        self._stdin_w: int | None = None
        self._transports: list[asyncio.BaseTransport] = []
        self._stdout: BoundedCapture | None = None
        self._stderr: BoundedCapture | None = None
        self._result: BoundedCapture | None = None
        self._info: BoundedCapture | None = None
        self._exited: asyncio.Future[tuple[int, Any]] | None = None
        self.used = False

    # ------------------------------------------------------------------ start-up
    async def start(
        self,
        spawner: Spawner,
        spec_factory: Callable[..., SandboxSpec] | None,
        uid_gid: tuple[int, int] | None,
    ) -> None:
        """Spawn bwrap and the interpreter; returns once the process exists."""
        in_r, in_w = os.pipe2(os.O_CLOEXEC)
        res_r, res_w = os.pipe2(os.O_CLOEXEC)
        info_r, info_w = os.pipe2(os.O_CLOEXEC)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        stdin_r, stdin_w = os.pipe2(os.O_CLOEXEC)
        child_fds = [in_r, res_w, info_w, out_w, err_w, stdin_r]
        command = interpreter_command(self.language, self.settings, in_r, res_w)
        # Child fd number -> our fd; the argv names the same numbers.
        fds = {0: stdin_r, 1: out_w, 2: err_w, in_r: in_r, res_w: res_w}
        if spec_factory is not None:
            spec = spec_factory(command=command, info_fd=info_w, language=self.language)
            argv = build_bwrap_argv(spec)
            fds.update({fd: fd for fd in spec.inherited_fds()})
            # The spec's own descriptors (data files, seccomp program) are single-use.
            child_fds += [fd for fd in spec.inherited_fds() if fd != info_w]
            cwd = None
            env: dict[str, str] = {}
        else:
            argv = command
            cwd = str(self.settings.workspace_dir)
            env = dict(base_environment(self.settings, self.language))
        # Under bwrap the per-sandbox cap is set by the sandbox's init itself; without bwrap
        # there is no user namespace to count in, so this rlimit is the cap itself.
        nproc = max(self.limits.pids_total, self.limits.pids) if spec_factory else self.limits.pids
        if uid_gid is not None:
            # bash reopens its script as /dev/fd/N, which checks the pipe inode's owner.
            os.fchown(in_r, uid_gid[0], uid_gid[1])
        try:
            child = await spawner.spawn(
                argv, fds=fds, env=env, cwd=cwd, uid_gid=uid_gid, rlimits=_rlimits(self.limits, nproc)
            )
        except OSError as exc:
            for fd in (*child_fds, in_w, res_r, info_r, out_r, err_r, stdin_w):
                os.close(fd)
            raise SandboxStartError(f"cannot start the sandbox: {exc}") from exc
        self.pid = child.pid
        self._exited = child.exited
        for fd in child_fds:
            os.close(fd)
        self._input_w = in_w
        self._stdin_w = stdin_w
        cap = self.settings.max_output_bytes
        for fd, limit, attr in (
            (out_r, cap, "_stdout"),
            (err_r, cap, "_stderr"),
            (res_r, self.settings.max_return_value_bytes + 64 * 1024, "_result"),
            (info_r, 64 * 1024, "_info"),
        ):
            transport, protocol = await capture_fd(fd, limit)
            self._transports.append(transport)
            setattr(self, attr, protocol)

    @property
    def alive(self) -> bool:
        return self._exited is not None and not self._exited.done()

    @property
    def exited(self) -> asyncio.Future[tuple[int, Any]] | None:
        """Resolves with (returncode, rusage) once bwrap is reaped; None before start()."""
        return self._exited

    @property
    def interpreter_started(self) -> bool:
        """Whether the bootstrap inside is running (it wrote STARTED_MARKER; for the pool)."""
        return self._result is not None and self._result.data().startswith(STARTED_MARKER)

    # ------------------------------------------------------------------ kill
    def _inner_pid(self) -> int | None:
        # bwrap reports the pid of the sandbox's PID-namespace init on --info-fd; killing it
        # makes the kernel kill every process in the namespace, setsid()'d or not.
        if self._info is None:
            return None
        try:
            doc = json.loads(self._info.data().decode() or "{}")
        except ValueError:
            return None
        pid = doc.get("child-pid")
        return int(pid) if isinstance(pid, int) else None

    async def kill(self) -> None:
        """Kill the whole process tree and wait until bwrap is reaped."""
        if self.pid is None or self._exited is None:
            return
        if self._exited.done():
            return
        inner = self._inner_pid()
        if inner is not None:
            with contextlib.suppress(OSError):
                fd = os.pidfd_open(inner)
                try:
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
                finally:
                    os.close(fd)
        try:
            await asyncio.wait_for(asyncio.shield(self._exited), _KILL_GRACE_SECONDS if inner else 0.001)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
            await self._exited

    async def discard(self) -> None:
        """Kill an unused sandbox and release its descriptors."""
        await self.kill()
        self._close_writers()
        for transport in self._transports:
            transport.close()

    def _close_writers(self) -> None:
        for attr in ("_input_w", "_stdin_w"):
            fd = getattr(self, attr)
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
                setattr(self, attr, None)

    # ------------------------------------------------------------------ run
    async def run(self, job: LaunchJob, stdin: str | None, workspace: str) -> ExecutionResult:
        """Hand ``job`` to the waiting interpreter and collect the outcome."""
        assert self.pid is not None and self._exited is not None
        assert not self.used, "a sandbox serves exactly one execution"
        self.used = True
        loop = asyncio.get_running_loop()
        before = await _snapshot(workspace, self.settings.artifact_max_files)
        started = time.monotonic()
        started_wall_ns = time.time_ns()
        deadline = started + job.timeout
        feeders = [
            asyncio.ensure_future(self._feed(self._input_w, launch_message(job))),
            asyncio.ensure_future(self._feed(self._stdin_w, (stdin or "").encode("utf-8", "surrogatepass"))),
        ]
        self._input_w = self._stdin_w = None
        timed_out = False
        try:
            returncode, rusage = await asyncio.wait_for(
                asyncio.shield(self._exited), max(0.0, deadline - time.monotonic())
            )
        except TimeoutError:
            timed_out = True
            await self.kill()
            returncode, rusage = self._exited.result()
        ended = time.monotonic()
        for feeder in feeders:
            feeder.cancel()
        await self._drain_captures()
        after = await _snapshot(workspace, self.settings.artifact_max_files)
        changes = artifacts.changed_files(before, after, started_wall_ns)
        cap = self.settings.artifact_max_reported
        details = (
            await loop.run_in_executor(
                None, artifacts.describe, workspace, changes[:cap], self.settings.artifact_max_hash_bytes
            )
            if changes
            else []
        )
        return self._build_result(
            job,
            returncode,
            rusage,
            ended - started,
            timed_out,
            details,
            truncated=before.truncated or after.truncated or len(changes) > cap,
        )

    async def _feed(self, fd: int | None, data: bytes) -> None:
        if fd is None:
            return
        loop = asyncio.get_running_loop()
        pipe = os.fdopen(fd, "wb", buffering=0)
        try:
            transport, _ = await loop.connect_write_pipe(asyncio.Protocol, pipe)
        except OSError:
            pipe.close()
            return
        # The transport writes what the pipe takes now and the rest as the reader drains
        # it; close() sends EOF (which starts the code) only after the last byte. A reader
        # that dies first makes the write fail with EPIPE, which closes the transport.
        transport.write(data)
        transport.close()

    async def _drain_captures(self) -> None:
        # All writers are dead once bwrap is reaped (the PID namespace is gone), so EOF is
        # near; the bound only guards against a leaked descriptor.
        waits = [c.done for c in (self._stdout, self._stderr, self._result) if c is not None]
        await asyncio.wait(waits, timeout=2.0)
        for transport in self._transports:
            transport.close()

    def _build_result(
        self,
        job: LaunchJob,
        returncode: int,
        rusage: Any,
        elapsed: float,
        timed_out: bool,
        details: list[Any],
        truncated: bool,
    ) -> ExecutionResult:
        assert self._stdout is not None and self._stderr is not None and self._result is not None
        stdout = self._stdout.data().decode("utf-8", "replace")
        stderr = self._stderr.data().decode("utf-8", "replace")
        raw_result = self._result.data()
        started_inner = raw_result.startswith(STARTED_MARKER)
        outcome = None
        if started_inner and uses_result_channel(self.language) and not self._result.truncated:
            outcome = _parse_outcome(raw_result[len(STARTED_MARKER) :])
        return_value: Any = None
        error: str | None = None
        exit_code = returncode
        if timed_out:
            status, reason, exit_code = Status.TIMEOUT, TerminationReason.TIMEOUT, -1
            suffix = TIMEOUT_MESSAGE.format(seconds=job.timeout)
            stderr = f"{stderr}\n{suffix}" if stderr and not stderr.endswith("\n") else stderr + suffix
            error = suffix
        elif not started_inner:
            # The interpreter never ran: bwrap itself failed (workspace missing, namespaces
            # refused, interpreter absent). Not the user's failure: `crashed`.
            status, reason, exit_code = Status.CRASHED, TerminationReason.SANDBOX_ERROR, -1
            error = "the sandbox could not be created: " + (stderr.strip()[-500:] or f"exit {returncode}")
        elif self._result.truncated:
            status, reason = Status.FAILED, TerminationReason.EXITED
            error = "the result channel exceeded its cap (the return value is too large)"
            exit_code = exit_code or 1
        elif outcome is not None and outcome.get("ok") is True and returncode == 0:
            status, reason = Status.SUCCESS, TerminationReason.EXITED
            return_value = outcome.get("return_value")
            # The result channel is written by user code: what it holds must still make a
            # valid JSON answer and callback (no lone surrogates, bounded depth).
            problem = json_problem(return_value)
            if problem is not None:
                status, return_value, exit_code = Status.FAILED, None, 1
                error = f"The handler's return value cannot be reported: it {problem}."
                stderr = f"{stderr}{error}\n"
        elif outcome is not None and outcome.get("ok") is False:
            status = Status.FAILED
            kind = outcome.get("error_type")
            reason = TerminationReason.MEMORY_LIMIT if kind == "MemoryError" else TerminationReason.EXITED
            error = _text(str(outcome.get("error", ""))[-2000:]) or None
            if exit_code == 0:
                exit_code = 1
        elif returncode == 0:
            status, reason = Status.SUCCESS, TerminationReason.EXITED
        else:
            status = Status.FAILED
            reason = TerminationReason.EXITED
            if returncode < 0 or returncode > 128:
                reason = TerminationReason.SIGNALED
            # Only the end of stderr: the interpreter's dying words, not anything printed
            # along the way.
            tail = stderr[-_MEMORY_MARKER_WINDOW:]
            if any(marker in tail for marker in _MEMORY_MARKERS):
                reason = TerminationReason.MEMORY_LIMIT
        metrics = Metrics(duration_ms=round(elapsed * 1000, 3))
        if rusage is not None:
            metrics.cpu_time_ms = round((rusage.ru_utime + rusage.ru_stime) * 1000, 3)
            metrics.peak_memory_mb = round(rusage.ru_maxrss / 1024, 3)
            metrics.io_read_bytes = int(rusage.ru_inblock) * 512
            metrics.io_write_bytes = int(rusage.ru_oublock) * 512
        return ExecutionResult(
            status=status,
            exit_code=exit_code,
            stdout=stdout,
            stderr=stderr,
            execution_time=round(elapsed, 6),
            return_value=return_value,
            metrics=metrics,
            artifacts=[d.path for d in details],
            artifact_details=details,
            artifacts_truncated=truncated,
            termination_reason=reason,
            stdout_truncated=self._stdout.truncated,
            stderr_truncated=self._stderr.truncated,
            error=error,
        )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# A workspace whose last scan found at most this many files is scanned on the event loop:
# that costs less (tens of microseconds) than the two thread hops of an executor call,
# which are ~1 ms of every run's latency on a busy 2-core machine (pool.py).
_INLINE_SCAN_FILES = 200
_last_scan_size: dict[str, int] = {}


async def _snapshot(workspace: str, max_files: int) -> artifacts.Snapshot:
    if _last_scan_size.get(workspace, _INLINE_SCAN_FILES + 1) <= _INLINE_SCAN_FILES:
        snap = artifacts.snapshot(workspace, min(max_files, _INLINE_SCAN_FILES + 1))
        if not snap.truncated or max_files <= _INLINE_SCAN_FILES:
            _last_scan_size[workspace] = len(snap.files)
            return snap
    snap = await asyncio.get_running_loop().run_in_executor(None, artifacts.snapshot, workspace, max_files)
    _last_scan_size[workspace] = len(snap.files)
    return snap


def _parse_outcome(raw: bytes) -> dict[str, Any] | None:
    if not raw:
        return None
    try:
        # NaN/Infinity are not JSON (the control plane rejects them); hostile nesting ends
        # in RecursionError, not ValueError.
        doc = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None


def _text(value: str) -> str:
    """``value`` with lone surrogates (from user-written JSON escapes) replaced."""
    return value.encode("utf-8", "replace").decode("utf-8")


def job_from_request(request: ExecuteRequest, settings: Settings) -> LaunchJob:
    """The launch job for a validated request, with limits clamped to the daemon's maxima."""
    return LaunchJob(
        execution_id=request.execution_id,
        language=request.language,
        code=request.code,
        event=request.effective_event(),
        env=dict(request.env_vars),
        timeout=settings.clamp_timeout(request.timeout),
        max_return_bytes=settings.max_return_value_bytes,
    )


def crashed_result(message: str, reason: TerminationReason, elapsed: float = 0.0) -> ExecutionResult:
    """A result for a run that never produced one of its own (sandbox error, shutdown)."""
    return ExecutionResult(
        status=Status.CRASHED,
        exit_code=-1,
        stderr=message,
        execution_time=round(elapsed, 6),
        metrics=Metrics(duration_ms=round(elapsed * 1000, 3)),
        termination_reason=reason,
        error=message,
    )


__all__ = ["Limits", "Mount", "Sandbox", "SandboxStartError", "crashed_result", "job_from_request"]
