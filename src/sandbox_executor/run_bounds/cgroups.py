"""One run's cgroup, in the two file dialects of the kernel (v1 and v2).

Each class owns the run's cgroup directories (one per hierarchy: v1 memory + pids, or the
single v2 one) and knows which files hold its limits, OOM count, peak and kill switch.
They do no scheduling: :mod:`.cgroup_run` drives them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from . import cgroupfs as fs
from .base import Limits, Mechanism


@dataclass(frozen=True)
class Node:
    """A cgroup directory and its path as /proc/<pid>/cgroup shows it."""

    directory: Path
    path: str

    def child(self, name: str) -> Node:
        return Node(self.directory / name, f"{self.path.rstrip('/')}/{name}")


class RunCgroup(Protocol):
    mechanism: Mechanism
    nodes: tuple[Node, ...]

    def create(self, limits: Limits) -> None: ...
    def oom_kills(self) -> int: ...
    def current(self) -> int | None: ...
    def peak(self) -> tuple[int | None, str]: ...
    def pids_hit(self) -> bool: ...
    def kill(self, timeout: float) -> bool: ...


def _belongs(nodes: tuple[Node, ...]) -> Callable[[int], bool]:
    paths = {node.path for node in nodes}

    def check(pid: int) -> bool:
        return fs.in_cgroup(pid, paths)

    return check


def join_paths(nodes: tuple[Node, ...]) -> tuple[str, ...]:
    return tuple(str(node.directory / "cgroup.procs") for node in nodes)


def remove(nodes: tuple[Node, ...], timeout: float) -> bool:
    return all(fs.rmdir_retry(node.directory, timeout) for node in nodes)


def has_member(nodes: tuple[Node, ...], pid: int) -> bool:
    return _belongs(nodes)(pid)


class V1Cgroup:
    """cgroup v1: a memory cgroup and, where writable, a pids cgroup of the same name."""

    mechanism: Mechanism = "cgroup_v1"

    def __init__(self, memory: Node, pids: Node | None) -> None:
        self.memory = memory
        self.pids = pids
        self.nodes: tuple[Node, ...] = (memory,) if pids is None else (memory, pids)

    def create(self, limits: Limits) -> None:
        for node in self.nodes:
            node.directory.mkdir()
        self.configure(limits)

    def configure(self, limits: Limits) -> None:
        mem = self.memory.directory
        fs.write_text(mem / "memory.limit_in_bytes", str(limits.memory_bytes))
        # memsw is memory + swap; equal to the memory limit means no swap at all. It only
        # exists with swap accounting on, and must be set after memory.limit_in_bytes.
        if (mem / "memory.memsw.limit_in_bytes").exists():
            fs.write_text(mem / "memory.memsw.limit_in_bytes", str(limits.memory_bytes))
        if self.pids is not None:
            fs.write_text(self.pids.directory / "pids.max", str(limits.pids))

    def oom_kills(self) -> int:
        # oom_kill counts processes of this cgroup killed by any OOM killer (kernel 4.13+).
        text = fs.read_text(self.memory.directory / "memory.oom_control")
        return fs.parse_keyed(text).get("oom_kill", 0)

    def current(self) -> int | None:
        return fs.read_int(self.memory.directory / "memory.usage_in_bytes")

    def peak(self) -> tuple[int | None, str]:
        return fs.read_int(self.memory.directory / "memory.max_usage_in_bytes"), "memory.max_usage_in_bytes"

    def pids_hit(self) -> bool:
        if self.pids is None:
            return False
        return fs.parse_keyed(fs.read_text(self.pids.directory / "pids.events")).get("max", 0) > 0

    def kill(self, timeout: float) -> bool:
        # No cgroup.kill in v1: pids.max=0 first makes every fork in the run fail, so the
        # kill loop over cgroup.procs cannot be outrun by a fork bomb.
        if self.pids is not None and self.pids.directory.exists():
            fs.write_text(self.pids.directory / "pids.max", "0")
        dirs = [node.directory for node in self.nodes]
        return fs.kill_members(dirs, _belongs(self.nodes), timeout)


class V2Cgroup:
    """cgroup v2: one directory with memory and pids enabled by its parent."""

    mechanism: Mechanism = "cgroup_v2"

    def __init__(self, node: Node) -> None:
        self.node = node
        self.nodes: tuple[Node, ...] = (node,)

    def _file(self, name: str) -> Path:
        return self.node.directory / name

    def create(self, limits: Limits) -> None:
        self.node.directory.mkdir()
        self.configure(limits)

    def configure(self, limits: Limits) -> None:
        fs.write_text(self._file("memory.max"), str(limits.memory_bytes))
        # Absent when the kernel has no swap accounting: then nothing can swap anyway.
        if self._file("memory.swap.max").exists():
            fs.write_text(self._file("memory.swap.max"), "0")
        # One OOM kill takes the whole run, as the watchdog and the v1 monitor do.
        if self._file("memory.oom.group").exists():
            fs.write_text(self._file("memory.oom.group"), "1")
        fs.write_text(self._file("pids.max"), str(limits.pids))

    def oom_kills(self) -> int:
        return fs.parse_keyed(fs.read_text(self._file("memory.events"))).get("oom_kill", 0)

    def current(self) -> int | None:
        return fs.read_int(self._file("memory.current"))

    def peak(self) -> tuple[int | None, str]:
        # memory.peak exists from Linux 5.19; before it the run's sampled maximum is used.
        return fs.read_int(self._file("memory.peak")), "memory.peak"

    def pids_hit(self) -> bool:
        return fs.parse_keyed(fs.read_text(self._file("pids.events"))).get("max", 0) > 0

    def kill(self, timeout: float) -> bool:
        if self._file("cgroup.kill").exists():
            fs.write_text(self._file("cgroup.kill"), "1")
            return _wait_unpopulated(self.node.directory, timeout)
        if self._file("pids.max").exists():
            fs.write_text(self._file("pids.max"), "0")
        return fs.kill_members([self.node.directory], _belongs(self.nodes), timeout)


def _wait_unpopulated(directory: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    pause = 0.0005
    while True:
        try:
            events = fs.parse_keyed(fs.read_text(directory / "cgroup.events"))
        except FileNotFoundError:
            return True
        if events.get("populated", 0) == 0:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(pause)
        pause = min(pause * 2, 0.05)
