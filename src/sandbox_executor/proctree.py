"""Processes and their memory, read from /proc: the one process-tree helper of the daemon
(the memory watchdog's incremental table, the warm pool's memory report, exit checks).

Reading every /proc/<pid>/stat costs about 10 us a process, so :class:`ProcTable` is
incremental: a pid's parent and start time are read once, when the pid first shows up. A
pid already known can only stand for a new process if the kernel handed it out again since
the last look; the kernel's last allocated pid (/proc/loadavg) tells which range was handed
out, and the fork counter (/proc/stat) tells when it went round the whole pid space, so
only those pids are read again. (/proc/<pid>/task/*/children would be cheaper still but
needs CONFIG_PROC_CHILDREN, which kernels such as the reference host's lack.)
"""

from __future__ import annotations

import os
import select
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    start: int  # clock ticks after boot: with the pid, a process's identity


def _read(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 65536)
    finally:
        os.close(fd)


def parse_stat(pid: int, data: bytes) -> tuple[Proc, bytes]:
    """(identity, state letter) from a /proc/<pid>/stat line (the name may hold spaces)."""
    rest = data[data.rindex(b")") + 2 :].split()
    return Proc(pid, int(rest[1]), int(rest[19])), rest[0]


def read_proc(pid: int, proc: str = "/proc") -> tuple[Proc, bytes] | None:
    try:
        return parse_stat(pid, _read(f"{proc}/{pid}/stat"))
    except (OSError, ValueError, IndexError):
        return None


def anon_shmem_bytes(data: bytes) -> int:
    """RssAnon + RssShmem from a /proc/<pid>/status text: what the process holds that the
    kernel cannot drop (file-backed pages such as the interpreter's libraries are shared
    by every process and reclaimable, so they do not count)."""
    total = 0
    for line in data.splitlines():
        if line.startswith((b"RssAnon:", b"RssShmem:")):
            total += int(line.split()[1]) * 1024
    return total


def process_memory(pid: int, proc: str = "/proc") -> int | None:
    try:
        return anon_shmem_bytes(_read(f"{proc}/{pid}/status"))
    except (OSError, ValueError):
        return None


def pss_anon_shmem_bytes(data: bytes) -> int:
    """Pss_Anon + Pss_Shmem from a /proc/<pid>/smaps_rollup text (Linux 5.7+; before it,
    the whole Pss): each page shared by N processes counts 1/N in each of them."""
    fields: dict[bytes, int] = {}
    for line in data.splitlines():
        key, _, rest = line.partition(b":")
        if key in (b"Pss", b"Pss_Anon", b"Pss_Shmem"):
            fields[key] = int(rest.split()[0]) * 1024
    if b"Pss_Anon" in fields:
        return fields[b"Pss_Anon"] + fields.get(b"Pss_Shmem", 0)
    return fields.get(b"Pss", 0)


def proportional_memory(pid: int, proc: str = "/proc") -> int | None:
    """What ``pid`` holds that the kernel cannot drop, shared pages split among their
    sharers: sums over processes without counting a fork's copy-on-write pages twice.
    Costly (the kernel walks the page tables: about 3 ms per 100 MiB resident)."""
    try:
        with open(f"{proc}/{pid}/smaps_rollup", "rb") as fh:
            return pss_anon_shmem_bytes(fh.read())
    except (OSError, ValueError, IndexError):
        return None


def rss_bytes(pid: int) -> int:
    """VmRSS of ``pid`` (0 when it is gone): shared library pages count in every process."""
    try:
        for line in _read(f"/proc/{pid}/status").splitlines():
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _fork_count(proc: str) -> int:
    for line in _read(f"{proc}/stat").splitlines():
        if line.startswith(b"processes "):
            return int(line.split()[1])
    return 0


def _last_pid(proc: str) -> int:
    return int(_read(f"{proc}/loadavg").split()[-1])


def _pid_max(proc: str) -> int:
    try:
        return int(_read(f"{proc}/sys/kernel/pid_max"))
    except OSError:
        return 1 << 22


def reissued(last: int, now: int, pid: int) -> bool:
    """Whether ``pid`` lies in the cyclic range (last, now] the allocator handed out."""
    if last <= now:
        return last < pid <= now
    return pid > last or pid <= now


@dataclass
class ProcTable:
    """pid -> identity of every process in our pid namespace, refreshed incrementally."""

    proc: str = "/proc"
    procs: dict[int, Proc] = field(default_factory=dict)
    _forks: int = -1
    _last_pid: int = 0
    _pid_max: int = 0

    def refresh(self) -> tuple[list[Proc], set[int]]:
        """Re-list /proc: (processes new since the last call, oldest first; pids gone)."""
        forks, last_pid = _fork_count(self.proc), _last_pid(self.proc)
        if not self._pid_max:
            self._pid_max = _pid_max(self.proc)
        wrapped = self._forks < 0 or forks - self._forks >= self._pid_max // 2
        listed = {int(name) for name in os.listdir(self.proc) if name.isdigit()}
        gone = set(self.procs.keys() - listed)
        fresh: list[Proc] = []
        for pid in listed:
            known = self.procs.get(pid)
            if known is not None and not wrapped and not reissued(self._last_pid, last_pid, pid):
                continue
            read = read_proc(pid, self.proc)
            if read is None:
                gone.add(pid)
                continue
            if known is not None and known.start == read[0].start:
                continue
            if known is not None:
                gone.add(pid)  # the pid now names another process
            fresh.append(read[0])
            self.procs[pid] = read[0]
        for pid in gone - {p.pid for p in fresh}:
            self.procs.pop(pid, None)
        self._forks, self._last_pid = forks, last_pid
        fresh.sort(key=lambda p: (p.start, p.pid))
        return fresh, gone

    def descendants(self, root: Proc) -> dict[int, int]:
        """pid -> start of ``root`` and everything below it in the current table."""
        children: dict[int, list[Proc]] = {}
        for p in self.procs.values():
            children.setdefault(p.ppid, []).append(p)
        found = {root.pid: root.start}
        queue = [root.pid]
        while queue:
            for child in children.get(queue.pop(), ()):
                if child.pid not in found and child.start >= root.start:
                    found[child.pid] = child.start
                    queue.append(child.pid)
        return found


def process_tree(roots: Iterable[int]) -> list[int]:
    """``roots`` (those still alive) and all their descendants, from one look at /proc."""
    table = ProcTable()
    table.refresh()
    found: dict[int, int] = {}
    for pid in roots:
        root = table.procs.get(pid)
        if root is not None:
            found.update(table.descendants(root))
    return list(found)


def process_tree_rss(roots: Iterable[int]) -> int:
    """Sum of VmRSS (bytes) of ``roots`` and all their descendants.

    Shared pages (the interpreter's libraries) count once per process, as RSS does: an
    upper bound of what the pool costs.
    """
    return sum(rss_bytes(pid) for pid in process_tree(roots))


def has_exited(pid: int) -> bool:
    """Whether ``pid`` is already dead though the event loop has not noticed yet.

    A pidfd turns readable when its process exits, whoever its parent is (the daemon or a
    spawner helper); polling it neither reaps nor disturbs the owner's own exit watch.
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # cannot tell (no pidfd support): trust the exit future
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    finally:
        os.close(fd)
