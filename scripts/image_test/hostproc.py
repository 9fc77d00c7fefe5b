"""The host's view of a container's processes: /proc read from outside (we are root).

What sandboxed code reports about itself can be wrong; these are the verdicts' ground
truth: which processes exist, who their parents are, what is on the container's disk.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    state: str  # R, S, D, Z (zombie: dead, not yet reaped), ...
    start: int  # clock ticks after boot: tells a process from a later one with its pid
    cmdline: str


def read(pid: int) -> Proc | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    cmdline = raw.replace(b"\0", b" ").decode("utf-8", "replace").strip()
    return Proc(pid, int(fields[1]), fields[0], int(fields[19]), cmdline)


def everything() -> dict[int, Proc]:
    procs = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (proc := read(int(entry))) is not None:
            procs[proc.pid] = proc
    return procs


def tree(root: int, depth: int) -> dict[int, Proc]:
    """``root`` and its descendants down to ``depth`` generations."""
    procs = everything()
    children: dict[int, list[int]] = {}
    for proc in procs.values():
        children.setdefault(proc.ppid, []).append(proc.pid)
    found: dict[int, Proc] = {}
    level = [root] if root in procs else []
    for _ in range(depth + 1):
        for pid in level:
            found[pid] = procs[pid]
        level = [child for pid in level for child in children.get(pid, [])]
    return found


def alive(proc: Proc) -> bool:
    """The very same process (pid and start time) still exists, and is no zombie."""
    now = read(proc.pid)
    return now is not None and now.start == proc.start and now.state not in ("Z", "X")


def with_marker(marker: str) -> list[Proc]:
    """Every process on the host whose command line or environment holds ``marker``."""
    found = []
    needle = marker.encode()
    for proc in everything().values():
        try:
            environ = Path(f"/proc/{proc.pid}/environ").read_bytes()
        except OSError:
            environ = b""
        if marker in proc.cmdline or needle in environ:
            found.append(proc)
    return found


def container_path(pid1: int, path: str) -> Path:
    """``path`` as the container sees it, through its PID 1's root.

    Symbolic links are followed by hand: under /proc/<pid>/root the kernel resolves an
    absolute link target against *our* root, not the container's (/opt/sandbox-venv is one).
    """
    root = Path(f"/proc/{pid1}/root")
    parts = [p for p in path.split("/") if p]
    done: list[str] = []
    for _ in range(64):
        if not parts:
            break
        part = parts.pop(0)
        if part == "..":
            done = done[:-1]
            continue
        candidate = root.joinpath(*done, part)
        if candidate.is_symlink():
            target = os.readlink(candidate)
            if target.startswith("/"):
                done = []
            parts = [p for p in target.split("/") if p and p != "."] + parts
            continue
        done.append(part)
    return root.joinpath(*done)
