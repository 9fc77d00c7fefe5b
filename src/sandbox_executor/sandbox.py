"""A running execution sandbox: started before it knows its request, serves exactly one.

:class:`SandboxFactory` starts one (bwrap + interpreter + bootstrap, blocked reading its
input pipe); :meth:`Sandbox.run` hands it a job, enforces the deadline, and turns what it
observed into an :class:`ExecutionResult` (the verdict itself is ``outcome.py``'s). The
cold path starts one and hands over at once; the warm pool (``pool.py``) starts them ahead.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any

import structlog

from . import artifacts, private_tmp
from .bootstraps import Bootstraps
from .bwrap import Mount, build_bwrap_argv, renumbered
from .capture import BoundedCapture
from .config import MIB, Settings
from .confined import bare_launch, confined_launch
from .host import HostProfile
from .models import ExecutionResult, Language, Metrics
from .outcome import RunFacts, Tripped, classify
from .process import Launch, SandboxProcess
from .run_guards import GuardedRun, GuardReport, RunGuards
from .runtimes import (
    BOOTSTRAP_FD,
    BWRAP_LAYOUT,
    INPUT_FD,
    RESULT_FD,
    SANDBOX_VENV_MOUNT,
    STARTED_MARKER,
    LaunchJob,
    Layout,
    base_environment,
    interpreter_command,
    launch_message,
    uses_result_channel,
)
from .spawner import Spawner, Usage

if TYPE_CHECKING:
    from .streaming import OutputSink

log = structlog.get_logger(__name__)


class Sandbox:
    """One started sandbox, waiting on its input pipe for exactly one execution."""

    def __init__(
        self,
        language: Language,
        settings: Settings,
        process: SandboxProcess,
        *,
        input_w: int,
        stdin_w: int,
        stdout: BoundedCapture,
        stderr: BoundedCapture,
        result: BoundedCapture,
        guard: GuardedRun | None = None,
        layout: Layout = BWRAP_LAYOUT,
        private_dir: str | None = None,
    ) -> None:
        """``guard``: the run's bounds outside the sandbox (memory and processes of the
        whole run, workspace writes), started with the sandbox. ``layout``: the paths the
        code sees; ``private_dir``: its temporary directory when the daemon made one
        (removed once the sandbox is gone)."""
        self.language = language
        self.layout = layout
        self._private_dir = private_dir
        self.settings = settings
        self.process = process
        self.started_at = time.monotonic()
        self._input_w: int | None = input_w
        self._stdin_w: int | None = stdin_w
        self._stdout = stdout
        self._stderr = stderr
        self._result = result
        self._guard = guard
        self.used = False

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.alive

    @property
    def exited(self) -> asyncio.Future[tuple[int, Usage | None]]:
        """Resolves with (returncode, rusage) once bwrap is reaped."""
        return self.process.exited

    @property
    def interpreter_started(self) -> bool:
        """Whether the bootstrap inside is running (it wrote STARTED_MARKER; for the pool)."""
        return self._result.data().startswith(STARTED_MARKER)

    async def kill(self) -> None:
        await self.process.kill()

    async def discard(self) -> None:
        """Kill the sandbox (if still running) and release its descriptors, directory and
        its run's cgroups."""
        await self.process.kill()
        self._close_writers()
        self.process.close()
        if self._private_dir is not None:
            path, self._private_dir = self._private_dir, None
            await asyncio.to_thread(private_tmp.remove, path)
        if self._guard is not None:
            # Blocking (a leftover kill, rmdir retries): off the event loop.
            await asyncio.to_thread(self._guard.close)

    def _close_writers(self) -> None:
        for fd in (self._input_w, self._stdin_w):
            if fd is not None:
                os.close(fd)
        self._input_w = self._stdin_w = None

    async def run(
        self, job: LaunchJob, stdin: str | None, workspace: str, *, output: OutputSink | None = None
    ) -> ExecutionResult:
        """Hand ``job`` to the waiting interpreter and collect the outcome; ``output`` gets
        stdout and stderr live, as they are read."""
        assert not self.used, "a sandbox serves exactly one execution"
        self.used = True
        if output is not None:
            # Attached here, not at start: a warm sandbox started before its execution existed.
            self._stdout.attach(partial(output.write, "stdout"))
            self._stderr.attach(partial(output.write, "stderr"))
        before = await artifacts.snapshot_soon(workspace, self.settings.artifact_max_files)
        started = time.monotonic()
        started_wall_ns = time.time_ns()
        if self._guard is not None:
            self._guard.hand_off()
        feeders = [
            asyncio.ensure_future(_feed(self._input_w, launch_message(job, self.layout))),
            asyncio.ensure_future(_feed(self._stdin_w, (stdin or "").encode("utf-8", "surrogatepass"))),
        ]
        self._input_w = self._stdin_w = None
        timed_out = False
        try:
            returncode, usage = await asyncio.wait_for(asyncio.shield(self.exited), job.timeout)
        except TimeoutError:
            timed_out = True
            await self.process.kill()
            returncode, usage = self.exited.result()
        elapsed = time.monotonic() - started
        for feeder in feeders:
            feeder.cancel()
        await self.process.drain([self._stdout, self._stderr, self._result])
        after = await artifacts.snapshot_soon(workspace, self.settings.artifact_max_files)
        changes = artifacts.changed_files(before, after, started_wall_ns)
        cap = self.settings.artifact_max_reported
        details = (
            await asyncio.get_running_loop().run_in_executor(
                None, artifacts.describe, workspace, changes[:cap], self.settings.artifact_max_hash_bytes
            )
            if changes
            else []
        )
        raw = self._result.data()
        started_inner = raw.startswith(STARTED_MARKER)
        guarded = self._guard.report(returncode, timed_out=timed_out) if self._guard is not None else None
        verdict = classify(
            RunFacts(
                returncode=returncode,
                timed_out=timed_out,
                timeout_seconds=job.timeout,
                started=started_inner,
                stderr=self._stderr.data().decode("utf-8", "replace"),
                uses_channel=uses_result_channel(self.language),
                channel=raw[len(STARTED_MARKER) :] if started_inner else b"",
                channel_truncated=self._result.truncated,
                tripped=guarded.tripped if guarded is not None else Tripped.NONE,
                limit_notes=guarded.notes if guarded is not None else (),
            )
        )
        return ExecutionResult(
            status=verdict.status,
            exit_code=verdict.exit_code,
            stdout=self._stdout.data().decode("utf-8", "replace"),
            stderr=verdict.stderr,
            execution_time=round(elapsed, 6),
            return_value=verdict.return_value,
            metrics=_metrics(elapsed, usage, guarded),
            artifacts=[d.path for d in details],
            artifact_details=details,
            artifacts_truncated=before.truncated or after.truncated or len(changes) > cap,
            termination_reason=verdict.termination_reason,
            stdout_truncated=self._stdout.truncated,
            stderr_truncated=self._stderr.truncated,
            error=verdict.error,
        )


class SandboxFactory:
    """Starts execution sandboxes: the host profile, the spawner helper and the bootstrap
    programs, wired once."""

    def __init__(
        self, settings: Settings, host: HostProfile, spawner: Spawner, guards: RunGuards | None = None
    ) -> None:
        """``guards`` (owned from now on, closed by :meth:`aclose`) bound every sandbox's run."""
        self.settings = settings
        self.host = host
        self.spawner = spawner
        self.guards = guards
        self._bootstraps: Bootstraps | None = None
        self._retiring: set[asyncio.Task[None]] = set()

    @property
    def bootstraps(self) -> Bootstraps:
        if self._bootstraps is None:
            self._bootstraps = Bootstraps.load(self.settings.python_binary)
        return self._bootstraps

    async def start(self, language: Language) -> Sandbox:
        """Start a sandbox for ``language`` that waits for its launch message."""
        in_r, in_w = os.pipe2(os.O_CLOEXEC)
        res_r, res_w = os.pipe2(os.O_CLOEXEC)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        stdin_r, stdin_w = os.pipe2(os.O_CLOEXEC)
        if self.host.run_as is not None:
            # bash reopens its script as /dev/fd/N, which checks the pipe inode's owner.
            os.fchown(in_r, *self.host.run_as)
        # The child's descriptor number -> ours.
        fds = {0: stdin_r, 1: out_w, 2: err_w, INPUT_FD: in_r, RESULT_FD: res_w}
        ours = [in_w, res_r, out_r, err_r, stdin_w]
        layout = self._layout()
        private_dir = None if layout is BWRAP_LAYOUT else layout.tmp
        # Created before the spawn: the child joins its cgroups before exec.
        guard = self.guards.open() if self.guards is not None else None
        try:
            launch = self._launch(language, fds, layout)
            if guard is not None:
                launch = replace(launch, cgroup_procs=guard.join_paths)
            process = await SandboxProcess.spawn(self.spawner, launch, ours=ours)
        except BaseException:
            if private_dir is not None:
                private_tmp.remove(private_dir)
            if guard is not None:
                guard.close()
            raise
        if guard is not None:
            try:
                guard.start(process.pid)
            except BaseException:
                # Never run a sandbox its bounds do not hold.
                await process.kill()
                process.close()
                for fd in ours:
                    os.close(fd)
                if private_dir is not None:
                    private_tmp.remove(private_dir)
                guard.close()
                raise
        settings = self.settings
        cap = settings.max_output_bytes
        return Sandbox(
            language,
            settings,
            process,
            input_w=in_w,
            stdin_w=stdin_w,
            stdout=await process.capture(out_r, cap),
            stderr=await process.capture(err_r, cap),
            result=await process.capture(res_r, settings.max_return_value_bytes + 64 * 1024),
            guard=guard,
            layout=layout,
            private_dir=private_dir,
        )

    def _layout(self) -> Layout:
        """bwrap's mount points, or (no mount namespace) the real paths and a fresh
        private temporary directory."""
        if self.host.uses_bwrap:
            return BWRAP_LAYOUT
        tmp = private_tmp.create(self.host.run_as)
        venv = os.path.realpath(self.settings.sandbox_venv_path)
        return Layout(workspace=str(self.settings.workspace_dir), venv=venv, tmp=tmp, home=tmp)

    def _launch(self, language: Language, fds: dict[int, int], layout: Layout) -> Launch:
        settings, host = self.settings, self.host
        program = f"/dev/fd/{BOOTSTRAP_FD}"
        bwrap = host.uses_bwrap
        command = interpreter_command(language, settings, INPUT_FD, RESULT_FD, program, own_nproc=bwrap)
        lent = self.bootstraps.lent(language, BOOTSTRAP_FD)
        env = base_environment(settings, language, layout)
        workspace = str(settings.workspace_dir)
        rlimits = host.limits.rlimits(namespaced=bwrap)
        if host.level == "landlock":
            return confined_launch(
                host,
                command,
                fds,
                lent=lent,
                workspace=workspace,
                private_tmp=layout.tmp,
                env=dict(env),
                rlimits=rlimits,
                read_only=[layout.venv],
            )
        if not bwrap:
            return bare_launch(host, command, fds, lent=lent, cwd=workspace, env=dict(env), rlimits=rlimits)
        info_r, info_w = os.pipe2(os.O_CLOEXEC)
        venv = Mount("ro-bind-try", os.path.realpath(settings.sandbox_venv_path), SANDBOX_VENV_MOUNT)
        spec = host.spec(command=command, workspace=workspace, env=env, extra_mounts=[venv], info_fd=info_w)
        spec, spec_fds = renumbered(spec, BOOTSTRAP_FD + 1)
        fds.update(spec_fds)
        argv = build_bwrap_argv(spec)
        return Launch(argv, fds, lent, run_as=host.run_as, rlimits=rlimits, info_fd=info_r)

    def retire(self, sandbox: Sandbox) -> None:
        """Discard a sandbox whose run is over, in the background: removing its run's
        cgroups (about 0.4 ms) need not delay the result."""
        task = asyncio.ensure_future(sandbox.discard())
        self._retiring.add(task)
        task.add_done_callback(self._retired)

    def _retired(self, task: asyncio.Task[None]) -> None:
        self._retiring.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("sandbox_discard_failed", error=repr(task.exception()))

    async def aclose(self) -> None:
        """Stop the spawner helper (its sandboxes die with it); release the bootstraps and
        the guards."""
        if self._retiring:
            await asyncio.wait(list(self._retiring), timeout=1.0)
        await self.spawner.aclose()
        if self._bootstraps is not None:
            self._bootstraps.close()
            self._bootstraps = None
        if self.guards is not None:
            await asyncio.to_thread(self.guards.close)
            self.guards = None


async def _feed(fd: int | None, data: bytes) -> None:
    if fd is None:
        return
    loop = asyncio.get_running_loop()
    pipe = os.fdopen(fd, "wb", buffering=0)
    try:
        transport, _ = await loop.connect_write_pipe(asyncio.Protocol, pipe)
    except OSError:
        pipe.close()
        return
    # The transport writes what the pipe takes now and the rest as the reader drains it;
    # close() sends EOF (which starts the code) only after the last byte. A reader that
    # dies first makes the write fail with EPIPE, which closes the transport.
    transport.write(data)
    transport.close()


def _metrics(elapsed: float, usage: Any, guarded: GuardReport | None) -> Metrics:
    metrics = Metrics(duration_ms=round(elapsed * 1000, 3))
    largest_process = 0
    if usage is not None:
        metrics.cpu_time_ms = round((usage.ru_utime + usage.ru_stime) * 1000, 3)
        largest_process = usage.ru_maxrss * 1024
        metrics.peak_memory_mb = round(usage.ru_maxrss / 1024, 3)
        metrics.io_read_bytes = int(usage.ru_inblock) * 512
        metrics.io_write_bytes = int(usage.ru_oublock) * 512
    if guarded is not None and guarded.peak_bytes is not None:
        # The whole run's peak. A sampled one (the watchdog) may miss a short burst; it is
        # never below the largest single process's own high-water mark.
        peak = guarded.peak_bytes
        if guarded.bounds.mechanism == "watchdog":
            peak = max(peak, largest_process)
        metrics.peak_memory_mb = round(peak / MIB, 3)
    return metrics
