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

from .capture import BoundedCapture, capture_fd
from .errors import SandboxStartError
from .limits import Rlimit
from .spawner import Spawner, Usage

_KILL_GRACE_SECONDS = 0.5
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


class SandboxProcess:
    """A started bwrap (or, without isolation, the bare command)."""

    def __init__(self, pid: int, exited: asyncio.Future[tuple[int, Usage | None]]) -> None:
        self.pid = pid
        self.exited = exited
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
            )
        except OSError as exc:
            for fd in (*ours, *([launch.info_fd] if launch.info_fd is not None else [])):
                os.close(fd)
            raise SandboxStartError(f"cannot start the sandbox: {exc}") from exc
        finally:
            for fd in set(launch.fds.values()):
                os.close(fd)
        process = cls(child.pid, child.exited)
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
        """Kill the whole process tree and wait until bwrap is reaped."""
        if self.exited.done():
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
            await asyncio.wait_for(asyncio.shield(self.exited), _KILL_GRACE_SECONDS if inner else 0.001)
        except TimeoutError:
            # bwrap itself (its own session): --die-with-parent takes the namespace along.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
            await self.exited
