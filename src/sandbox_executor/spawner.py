"""Daemon side of the spawner process (see bootstrap/spawner_main.py for the why).

:class:`Spawner` starts the helper once, sends it spawn requests with the child's
descriptors attached (SCM_RIGHTS), and resolves each child's exit future with the
``wait4`` status and rusage the helper reports.
"""

from __future__ import annotations

import array
import asyncio
import collections
import contextlib
import dataclasses
import json
import os
import socket
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from .bootstrap.confine import Policy

log = structlog.get_logger(__name__)

SPAWNER_PROGRAM = str(Path(__file__).with_name("bootstrap") / "spawner_main.py")


@dataclass(frozen=True)
class Usage:
    """The subset of ``struct rusage`` the engine reports (same names as os.wait4's)."""

    ru_utime: float
    ru_stime: float
    ru_maxrss: int
    ru_inblock: int
    ru_oublock: int


@dataclass(frozen=True)
class Confine:
    """What the spawner's child applies to itself before exec where no namespace holds the
    sandbox (the landlock level; bootstrap/spawner_child.py): no_new_privs, Landlock
    ``policy``, the seccomp program read from the child's descriptor ``seccomp_fd``; with
    ``supervise`` the child stays as the sandbox's supervisor (bootstrap/supervisor.py) and
    its own child confines itself and execs."""

    policy: Policy | None
    seccomp_fd: int | None
    supervise: bool = True

    def request(self) -> dict[str, Any]:
        policy = dataclasses.asdict(self.policy) if self.policy is not None else None
        return {"policy": policy, "seccomp_fd": self.seccomp_fd, "supervise": self.supervise}


@dataclass
class SpawnedChild:
    """A process started by the spawner; ``exited`` resolves to (returncode, usage)."""

    pid: int
    exited: asyncio.Future[tuple[int, Usage | None]]


class SpawnError(OSError):
    """The spawner could not start the program (exec failed, bad fds...)."""


class Spawner:
    """Owns the helper process and its socket."""

    def __init__(self, python_path: str) -> None:
        self.python_binary = python_path
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._replies: collections.deque[asyncio.Future[dict[str, Any]]] = collections.deque()
        self._children: dict[int, asyncio.Future[tuple[int, Usage | None]]] = {}
        self._lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def running(self) -> bool:
        return self._sock is not None and self._proc is not None and self._proc.poll() is None

    def _ensure_started(self) -> None:
        if self.running and self._loop is asyncio.get_running_loop():
            return
        self._teardown("the spawner restarted")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._proc = subprocess.Popen(
                [self.python_binary, "-I", "-S", SPAWNER_PROGRAM, str(theirs.fileno()), str(os.getpid())],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                close_fds=True,
            )
        finally:
            theirs.close()
        ours.setblocking(False)
        self._sock = ours
        # The socket is watched by one event loop; a caller on another loop (a second
        # asyncio.run) gets a fresh helper rather than replies nobody reads.
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(ours.fileno(), self._on_readable)

    def _teardown(self, reason: str) -> None:
        if self._sock is not None:
            if self._loop is not None and not self._loop.is_closed():
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        while self._replies:
            fut = self._replies.popleft()
            if not fut.done():
                fut.set_exception(SpawnError(reason))
        for exited in self._children.values():
            # Children die with the spawner (bwrap --die-with-parent); their accounting is lost.
            if not exited.done():
                exited.set_result((-9, None))
        self._children.clear()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            with contextlib.suppress(Exception):
                self._proc.wait(1)
        self._proc = None

    def _on_readable(self) -> None:
        assert self._sock is not None
        while True:
            try:
                data = self._sock.recv(1 << 16)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                log.error("spawner_exited")
                self._teardown("the spawner exited")
                return
            msg = json.loads(data)
            if "exit" in msg:
                child = self._children.pop(int(msg["exit"]), None)
                usage = Usage(*msg["ru"]) if msg.get("ru") else None
                if child is not None and not child.done():
                    child.set_result((os.waitstatus_to_exitcode(int(msg["status"])), usage))
                continue
            reply = self._replies.popleft()
            if "pid" in msg:
                # Register before anything else runs: the exit report may be the next packet.
                exited: asyncio.Future[tuple[int, Usage | None]] = asyncio.get_running_loop().create_future()
                self._children[int(msg["pid"])] = exited
                msg["_exited"] = exited
            if not reply.done():
                reply.set_result(msg)

    async def spawn(
        self,
        argv: Sequence[str],
        *,
        fds: Mapping[int, int],
        env: Mapping[str, str],
        cwd: str | None = None,
        uid_gid: tuple[int, int] | None = None,
        rlimits: Sequence[tuple[int, int, int]] = (),
        umask: int | None = None,
        nproc_headroom: int | None = None,
        confine: Confine | None = None,
        sweep_orphans: bool = False,
        cgroup_procs: Sequence[str] = (),
        oom_score_adj: int | None = None,
    ) -> SpawnedChild:
        """Start ``argv`` with ``fds`` (child fd number -> our fd) in a new session.

        ``nproc_headroom``: RLIMIT_NPROC becomes the uid's current task count plus this
        (no user namespace counts the child apart). ``confine``: see :class:`Confine`.
        ``sweep_orphans``: processes the child leaves behind, re-parented to the spawner
        (its subreaper), are killed when it exits (implied by a supervised ``confine``).
        ``cgroup_procs``: the run's cgroups the child joins before it drops privileges;
        ``oom_score_adj``: the child's and everything it starts.
        """
        if self._lock is None or self._loop is not asyncio.get_running_loop():
            self._lock = asyncio.Lock()
        async with self._lock:
            self._ensure_started()
            assert self._sock is not None
            request = {
                "argv": list(argv),
                "env": dict(env),
                "cwd": cwd,
                "fds": list(fds.keys()),
                "uid": uid_gid[0] if uid_gid else None,
                "gid": uid_gid[1] if uid_gid else None,
                "rlimits": [list(r) for r in rlimits],
                "umask": umask,
                "nproc_headroom": nproc_headroom,
                "confine": confine.request() if confine is not None else None,
                "sweep_orphans": sweep_orphans,
                "cgroup_procs": list(cgroup_procs),
                "oom_score_adj": oom_score_adj,
            }
            payload = json.dumps(request).encode()
            ancillary = [
                (socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", list(fds.values())).tobytes())
            ]
            reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
            self._replies.append(reply)
            try:
                # The spawner drains its socket at once; a blocking send of one packet is
                # microseconds, and asyncio has no sendmsg with ancillary data.
                self._sendmsg_blocking(payload, ancillary)
            except OSError as exc:
                self._replies.remove(reply)
                raise SpawnError(f"cannot reach the spawner: {exc}") from exc
            msg = await reply
        if "error" in msg:
            raise SpawnError(str(msg["error"]))
        return SpawnedChild(pid=int(msg["pid"]), exited=msg["_exited"])

    def _sendmsg_blocking(self, payload: bytes, ancillary: list[tuple[int, int, bytes]]) -> None:
        assert self._sock is not None
        self._sock.setblocking(True)
        try:
            self._sock.sendmsg([payload], ancillary)
        finally:
            self._sock.setblocking(False)

    async def aclose(self) -> None:
        self._teardown("the spawner was closed")
