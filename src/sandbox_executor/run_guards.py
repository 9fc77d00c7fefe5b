"""The limits a run gets from outside its sandbox: memory and processes over all of its
processes together (``run_bounds/``: cgroup v2, cgroup v1 or the memory watchdog) and what
it may add to the workspace (``workspace_guard.py``).

:class:`RunGuards` is set up once (the daemon's start-up, or a one-shot engine); every
sandbox carries a :class:`GuardedRun` from its spawn to its discard:

1. :meth:`RunGuards.open` before the spawn, so a warm sandbox is born inside its run's
   cgroup; the spawner's child joins ``join_paths`` before exec;
2. :meth:`GuardedRun.start` right after the spawn (watched from its first instruction);
3. :meth:`GuardedRun.hand_off` when the sandbox gets its job: the workspace watch starts;
4. :meth:`GuardedRun.report` once the run is over: the limits it tripped, their stderr
   lines, the whole run's peak memory;
5. :meth:`GuardedRun.close` (blocking: kills what is left, removes the cgroups).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog

from .config import MIB, Settings
from .outcome import Tripped
from .poller import Poller
from .run_bounds import BoundsProvider, BoundsReport, Breach, Limits, RunBounds, detect_bounds
from .run_bounds.base import breach_detail
from .workspace_guard import RunWriteWatch, WorkspaceGuard, WriteBreach

log = structlog.get_logger(__name__)

# What a process killed by the kernel's OOM killer exits with: SIGKILL, or bwrap's 128 + 9.
_SIGKILLED = (-9, 137)


@dataclass(frozen=True)
class GuardReport:
    """What the guards saw of one run."""

    tripped: Tripped
    # Lines for the run's stderr, most decisive first (memory before disk, as outcome.py).
    notes: tuple[str, ...]
    # The whole run's peak (cgroup high-water mark, or the watchdog's largest sampled total).
    peak_bytes: int | None
    bounds: BoundsReport


class GuardedRun:
    """One sandbox's bounds and workspace watch, and what they saw (thread-safe enough:
    the breach callbacks run on the poller thread and only set attributes)."""

    def __init__(self, bounds: RunBounds, limits: Limits, workspace: WorkspaceGuard | None) -> None:
        self._bounds = bounds
        self._limits = limits
        self._workspace = workspace
        self._watch: RunWriteWatch | None = None
        self._memory: Breach | None = None
        self._disk: WriteBreach | None = None
        self._closed = False

    @property
    def join_paths(self) -> tuple[str, ...]:
        return self._bounds.join_paths

    def start(self, root_pid: int) -> None:
        self._bounds.start(root_pid, self._on_memory)

    def hand_off(self) -> None:
        if self._workspace is not None and self._watch is None:
            self._watch = self._workspace.watch(self._on_disk, run_pids=self._bounds.pids)

    def _on_memory(self, breach: Breach) -> None:
        # Called just before the bounds kill the run: the reason is known before the exit.
        self._memory = breach

    def _on_disk(self, breach: WriteBreach) -> None:
        self._disk = breach
        self._bounds.kill()

    def report(self, returncode: int, *, timed_out: bool) -> GuardReport:
        """The verdict's inputs; call once the run's root has exited."""
        bounds = self._bounds.report()
        writes = self._watch.stop() if self._watch is not None else None
        tripped, notes = Tripped.NONE, []
        # The kernel's OOM killer picks sandbox processes first (oom_score_adj 1000): a
        # SIGKILL the daemon did not send, with OOM kills during the run, was one of them.
        oom_killed = bounds.oom_kills > 0 and returncode in _SIGKILLED and not timed_out
        if self._memory is not None or bounds.memory_limit_hit or oom_killed:
            tripped |= Tripped.MEMORY
            notes.append(self._memory.detail if self._memory is not None else self._oom_note(bounds))
        if self._disk is not None or (writes is not None and writes.exceeded):
            tripped |= Tripped.DISK
            if self._disk is not None:
                notes.append(self._disk.detail)
        return GuardReport(tripped, tuple(notes), bounds.peak_bytes, bounds)

    def _oom_note(self, bounds: BoundsReport) -> str:
        if bounds.mechanism == "watchdog" and not bounds.memory_limit_hit:
            return (
                "Out of memory: the kernel's OOM killer stopped the run while the host was short "
                "of memory (sandbox processes are its first choice)"
            )
        return breach_detail(self._limits, None, "the kernel stopped it at its cgroup's limit")

    def close(self) -> None:
        """Stop watching, kill what is left of the run, remove its cgroups (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._watch is not None:
            self._watch.stop()
        self._bounds.close()


class RunGuards:
    """The mechanisms chosen for this host, and the limits every run gets."""

    def __init__(
        self, limits: Limits, bounds: BoundsProvider, poller: Poller, workspace: WorkspaceGuard | None
    ) -> None:
        self.limits = limits
        self.bounds = bounds
        self.poller = poller
        self.workspace = workspace

    @classmethod
    def detect(cls, settings: Settings) -> RunGuards:
        """Choose the strongest memory bounds the host allows and sweep what a killed daemon
        left; raises BoundsUnavailable when a mechanism named in the settings cannot work."""
        poller = Poller()
        try:
            bounds = detect_bounds(
                poller, settings.run_bounds_mechanism, cgroup_v2_path=settings.cgroup_v2_path
            )
        except BaseException:
            poller.close()
            raise
        swept = bounds.sweep()
        if swept:
            log.warning("swept_runs_of_a_killed_daemon", runs=swept)
        cap = settings.max_workspace_write_mb * MIB
        try:
            workspace: WorkspaceGuard | None = WorkspaceGuard(settings.workspace_dir, cap, poller)
        except OSError as exc:
            # The start-up checks report a missing workspace; runs would fail anyway.
            log.warning("workspace_guard_unavailable", error=str(exc))
            workspace = None
        limits = Limits(settings.memory_limit_mb * MIB, settings.pids_limit)
        return cls(limits, bounds, poller, workspace)

    def open(self) -> GuardedRun:
        """The guards of one sandbox; call before spawning it."""
        return GuardedRun(self.bounds.create(self.limits), self.limits, self.workspace)

    def describe(self) -> dict[str, Any]:
        """For /health and ``check``."""
        doc: dict[str, Any] = {
            "memory_bounds": {"mechanism": self.bounds.mechanism, "detail": self.bounds.detail},
        }
        if self.workspace is not None:
            doc["workspace_writes"] = {"mode": self.workspace.mode, "detail": self.workspace.detail}
        return doc

    def close(self) -> None:
        self.bounds.close()
        self.poller.close()
