"""Reading the host's cgroup layout and the small file operations every mechanism shares.

Parsing is pure (text in, values out) so it is tested against recorded text; the helpers
below it do the I/O. Signals go through a pidfd after checking the process still belongs to
the run: the pid space here may be as small as 32768 and a pid read from cgroup.procs can
be reused by an unrelated process before the signal is sent.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import time
from collections.abc import Callable, Iterable, Set
from dataclasses import dataclass
from pathlib import Path

from .. import mountinfo
from ..proctree import read_proc


@dataclass(frozen=True)
class CgroupMount:
    """One cgroup (v1) or cgroup2 mount from /proc/self/mountinfo."""

    mount_point: str
    root: str
    version: int
    controllers: frozenset[str]


def parse_mountinfo(text: str) -> list[CgroupMount]:
    """The cgroup and cgroup2 mounts listed in a /proc/<pid>/mountinfo text."""
    mounts: list[CgroupMount] = []
    for m in mountinfo.parse(text):
        if m.fstype == "cgroup2":
            mounts.append(CgroupMount(m.mount_point, m.root, 2, frozenset()))
        elif m.fstype == "cgroup":
            mounts.append(CgroupMount(m.mount_point, m.root, 1, m.super_options))
    return mounts


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """Controller -> cgroup path from /proc/<pid>/cgroup; the v2 hierarchy is key ``""``."""
    paths: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hier, controllers, path = parts
        if hier == "0" and controllers == "":
            paths[""] = path
            continue
        for name in controllers.split(","):
            paths.setdefault(name, path)
    return paths


def cgroup_dir(mount: CgroupMount, path: str) -> Path | None:
    """Where cgroup ``path`` is visible under ``mount`` (None when the mount does not show it)."""
    root = mount.root.rstrip("/")
    if path != root and not path.startswith(root + "/"):
        return None
    return Path(mount.mount_point) / path[len(root) :].lstrip("/")


def parse_keyed(text: str) -> dict[str, int]:
    """``key value`` lines (memory.events, memory.oom_control, pids.events, memory.stat)."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            values[key] = int(value)
    return values


def parse_limit(text: str) -> int | None:
    """A limit file's value; ``max`` (no limit) is None."""
    value = text.strip()
    return None if value == "max" else int(value)


# --- I/O --------------------------------------------------------------------------------


def read_text(path: Path) -> str:
    with open(path, encoding="ascii") as fh:
        return fh.read()


def write_text(path: Path, value: str) -> None:
    # One write(2): cgroup files take a whole value per write (O_TRUNC is a no-op there,
    # as with a shell's ``echo 1 >``).
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def read_int(path: Path) -> int | None:
    """A numeric cgroup file, None when it does not exist (older kernel) or says ``max``."""
    try:
        return parse_limit(read_text(path))
    except FileNotFoundError:
        return None


def read_procs(directory: Path) -> list[int]:
    try:
        return [int(line) for line in read_text(directory / "cgroup.procs").split()]
    except FileNotFoundError:
        return []


def process_start(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (with the pid, a unique identity)."""
    read = read_proc(pid)
    return read[0].start if read is not None else None


def signal_if(pid: int, sig: int, belongs: Callable[[int], bool]) -> bool:
    """Send ``sig`` to ``pid`` only if, once pinned by a pidfd, ``belongs(pid)`` still holds."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return False
    try:
        if not belongs(pid):
            return False
        signal.pidfd_send_signal(pidfd, sig)
        return True
    except OSError:
        return False
    finally:
        os.close(pidfd)


def in_cgroup(pid: int, paths: Set[str]) -> bool:
    """Whether /proc/<pid>/cgroup lists one of ``paths`` in some hierarchy."""
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8", errors="replace") as fh:
            return not paths.isdisjoint(parse_proc_cgroup(fh.read()).values())
    except OSError:
        return False


def kill_members(directories: Iterable[Path], belongs: Callable[[int], bool], timeout: float) -> bool:
    """SIGKILL every process listed in the directories' cgroup.procs until none is left.

    Callers stop forks first (cgroup.kill, or pids.max=0 on v1) so the loop converges;
    returns False if processes were still listed at ``timeout``.
    """
    deadline = time.monotonic() + timeout
    dirs = list(directories)
    pause = 0.001
    while True:
        pids = {pid for d in dirs for pid in read_procs(d)}
        if not pids:
            return True
        for pid in pids:
            signal_if(pid, signal.SIGKILL, belongs)
        if time.monotonic() > deadline:
            return False
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def rmdir_retry(directory: Path, timeout: float) -> bool:
    """rmdir a cgroup, retrying while the kernel still drains exiting tasks (EBUSY)."""
    deadline = time.monotonic() + timeout
    pause = 0.001
    while True:
        try:
            directory.rmdir()
            return True
        except FileNotFoundError:
            return True
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                return False
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


_INSTANCE = re.compile(r"d(\d+)-(\d+)-(\d+)")


def _pid_namespace() -> int:
    return os.stat("/proc/self/ns/pid").st_ino


def instance_name() -> str:
    """This daemon's instance directory name: ``d<pid namespace>-<pid>-<start time>``."""
    pid = os.getpid()
    return f"d{_pid_namespace()}-{pid}-{process_start(pid)}"


def owner_dead(name: str) -> bool:
    """Whether ``name`` is an instance directory whose daemon is gone for sure.

    Names not of our making, and daemons of another pid namespace (whose pids mean
    nothing here: several containers may share a v1 hierarchy), are never judged dead.
    """
    match = _INSTANCE.fullmatch(name)
    if match is None or int(match[1]) != _pid_namespace():
        return False
    return process_start(int(match[2])) != int(match[3])
