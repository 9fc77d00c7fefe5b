"""Process trees and their memory, from /proc (the warm pool's memory report)."""

from __future__ import annotations

import os
import select
from collections.abc import Iterable


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _children_of(pid: int) -> list[int] | None:
    """Direct children from /proc/PID/task/*/children (None if the kernel lacks the file)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    kids: list[int] = []
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                kids.extend(int(x) for x in f.read().split())
        except FileNotFoundError:
            return None
        except OSError:
            continue
    return kids


def _parent_map() -> dict[int, list[int]]:
    """ppid -> children for every process (fallback without CONFIG_PROC_CHILDREN)."""
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: parse after the last ')'.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 1:
            tree.setdefault(int(fields[1]), []).append(int(entry))
    return tree


def process_tree(roots: Iterable[int]) -> list[int]:
    """``roots`` and all their descendants (/proc/PID/task/*/children, else a /proc walk)."""
    tree: dict[int, list[int]] | None = None
    found: list[int] = []
    seen: set[int] = set()
    stack = list(roots)
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        found.append(pid)
        kids = _children_of(pid) if tree is None else None
        if kids is None:
            if tree is None:
                tree = _parent_map()
            kids = tree.get(pid, [])
        stack.extend(kids)
    return found


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
