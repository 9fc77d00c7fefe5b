"""The one spawn / capture / kill path of every sandboxed process (executions and pip).

:meth:`SandboxProcess.spawn` hands a :class:`Launch` to the spawner helper and owns what
comes back: the exit future (returncode and rusage once bwrap is reaped), bounded
captures of the process's pipes, and a kill that takes the whole PID namespace down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .bootstrap.run_join import SANDBOX_OOM_SCORE_ADJ
from .capture import BoundedCapture, capture_fd
from .errors import SandboxStartError
from .limits import Rlimit
from .spawner import Confine, Spawner, Usage

_KILL_GRACE_SECONDS = 0.5
# A supervisor stops its tree on SIGTERM by walking /proc until nothing is left; under a
# fork bomb that takes a few walks. Only then would SIGKILL to its group follow.
_SUPERVISOR_GRACE_SECONDS = 3.0
_INFO_LIMIT = 64 * 1024


@dataclass(frozen=True)
class Launch:
    """What to start: ``fds`` maps the child's descriptor numbers to ours."""

    argv: Sequence[str]
    # Single-use descriptors (pipe ends, bwrap's data files): closed here once spawned.
    fds: Mapping[int, int]
    # Descriptors lent to the child that stay ours (shared read-only files).
    lent: Mapping[int, int] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    run_as: tuple[int, int] | None = None
    rlimits: Sequence[Rlimit] = ()
    umask: int | None = None
    # Our read end of bwrap's --info-fd, when it has one: how kill() finds the sandbox's init.
    info_fd: int | None = None
    # Without bwrap (spawner.Spawner.spawn says what each does).
    nproc_headroom: int | None = None
    confine: Confine | None = None
    sweep_orphans: bool = False
    # The run's cgroup.procs files, joined by the child before exec (none: no cgroups).
    cgroup_procs: Sequence[str] = ()
    # Every sandbox process is the kernel's first pick under memory pressure, never the daemon.
    oom_score_adj: int | None = SANDBOX_OOM_SCORE_ADJ

    @property
    def supervised(self) -> bool:
        return self.confine is not None and self.confine.supervise


class SandboxProcess:
    """A started bwrap (or, without isolation, the bare command)."""

    def __init__(
        self, pid: int, exited: asyncio.Future[tuple[int, Usage | None]], *, supervised: bool = False
    ) -> None:
        self.pid = pid
        self.exited = exited
        # The pid is a per-sandbox supervisor (bootstrap/supervisor.py): stopped by SIGTERM.
        self.supervised = supervised
        self._info: BoundedCapture | None = None
        self._transports: list[asyncio.BaseTransport] = []

    @classmethod
    async def spawn(cls, spawner: Spawner, launch: Launch, *, ours: Sequence[int] = ()) -> SandboxProcess:
        """Start ``launch``. Its single-use descriptors are closed either way; on failure
        ``ours`` (our ends of its pipes) are closed too and SandboxStartError is raised."""
        try:
            child = await spawner.spawn(
                launch.argv,
                fds={**launch.fds, **launch.lent},
                env=launch.env,
                cwd=launch.cwd,
                uid_gid=launch.run_as,
                rlimits=launch.rlimits,
                umask=launch.umask,
                nproc_headroom=launch.nproc_headroom,
                confine=launch.confine,
                sweep_orphans=launch.sweep_orphans,
                cgroup_procs=launch.cgroup_procs,
                oom_score_adj=launch.oom_score_adj,
            )
        except OSError as exc:
            for fd in (*ours, *([launch.info_fd] if launch.info_fd is not None else [])):
                os.close(fd)
            raise SandboxStartError(f"cannot start the sandbox: {exc}") from exc
        finally:
            for fd in set(launch.fds.values()):
                os.close(fd)
        process = cls(child.pid, child.exited, supervised=launch.supervised)
        if launch.info_fd is not None:
            process._info = await process.capture(launch.info_fd, _INFO_LIMIT)
        return process

    @property
    def alive(self) -> bool:
        return not self.exited.done()

    async def capture(self, fd: int, limit: int, *, tail: bool = False) -> BoundedCapture:
        """Capture our read end ``fd`` (owned from now on) into at most ``limit`` bytes."""
        transport, protocol = await capture_fd(fd, limit, tail=tail)
        self._transports.append(transport)
        return protocol

    async def drain(self, captures: Sequence[BoundedCapture], timeout: float = 2.0) -> None:  # noqa: ASYNC109
        """Wait for the captures' EOF, then release every pipe.

        All writers are dead once bwrap is reaped (the PID namespace is gone), so EOF is
        near; the bound only guards against a leaked descriptor.
        """
        await asyncio.wait([c.done for c in captures], timeout=timeout)
        self.close()

    def close(self) -> None:
        for transport in self._transports:
            transport.close()

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
        """Kill the whole process tree and wait until bwrap (or the supervisor) is reaped."""
        if self.exited.done():
            return
        if self.supervised:
            # Never SIGKILL a supervisor first: it alone knows the tree (setsid'd children
            # included), and kills all of it on SIGTERM before it exits.
            _signal(self.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(self.exited), _SUPERVISOR_GRACE_SECONDS)
                return
            except TimeoutError:
                pass
        inner = self._inner_pid()
        if inner is not None:
            _signal(inner, signal.SIGKILL)
        try:
            await asyncio.wait_for(asyncio.shield(self.exited), _KILL_GRACE_SECONDS if inner else 0.001)
        except TimeoutError:
            # bwrap itself (its own session): --die-with-parent takes the namespace along. A
            # supervisor's group: what escaped it returns to the spawner, which kills it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
            await self.exited


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(OSError):
        fd = os.pidfd_open(pid)
        try:
            signal.pidfd_send_signal(fd, sig)
        finally:
            os.close(fd)
