"""Per-run cgroups (v1 or v2) and the provider that lays them out and sweeps leftovers.

Layout, under each hierarchy's base directory (``<daemon's cgroup>/sandbox-executor`` or a
configured v2 directory)::

    base/d<pid ns>-<pid>-<start>/r<n>     one directory per daemon instance, one per run

The instance name is the daemon's pid namespace, pid and start time, so a daemon started
after a crash (or a test daemon next to a real one) knows which directories belong to a
dead owner: the start-up sweep kills and removes only those, and never touches another
pid namespace's (whose pids it cannot check).

The kernel enforces the limits; a probe on the shared poller reads the run's OOM count
every ``poll_interval`` and, on the first OOM kill, kills the rest of the run so that
a ``multiprocessing`` parent does not wait forever for a worker the kernel killed.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import structlog

from ..poller import Poller, PollHandle
from . import cgroupfs as fs
from .base import (
    BoundsReport,
    BoundsUnavailable,
    Breach,
    BreachCallback,
    Limits,
    Mechanism,
    breach_detail,
)
from .cgroups import Node, RunCgroup, has_member, join_paths, remove

log = structlog.get_logger(__name__)

KILL_TIMEOUT = 5.0
RMDIR_TIMEOUT = 2.0

# Run names are unique per process, not per provider: tests build many providers in one
# process, and a run left behind by one must not collide with the next one's.
_RUN_NUMBERS = itertools.count(1)

# Makes a RunCgroup of the run's nodes, one per hierarchy, in base order.
CgroupFactory = Callable[[tuple[Node, ...]], RunCgroup]


class CgroupRun:
    """The bounds of one run in its own cgroup (see base.RunBounds)."""

    def __init__(self, cgroup: RunCgroup, limits: Limits, poller: Poller, poll_interval: float) -> None:
        self._cg = cgroup
        self._limits = limits
        self._poller = poller
        self._interval = poll_interval
        self._lock = threading.Lock()
        self._handle: PollHandle | None = None
        self._on_breach: BreachCallback | None = None
        self._breached = False
        self._sampled_peak = 0
        self._final: BoundsReport | None = None
        try:
            cgroup.create(limits)
        except OSError as exc:
            remove(cgroup.nodes, RMDIR_TIMEOUT)
            raise BoundsUnavailable(f"cannot create the run's cgroup: {exc}") from exc

    @property
    def mechanism(self) -> Mechanism:
        return self._cg.mechanism

    @property
    def join_paths(self) -> tuple[str, ...]:
        return join_paths(self._cg.nodes)

    def start(self, root_pid: int, on_breach: BreachCallback | None = None) -> None:
        # A sandbox that did not join its cgroup would run unbounded: refuse loudly. (A
        # root that already exited cannot be checked and has nothing left to bound.)
        if not has_member(self._cg.nodes, root_pid) and fs.process_start(root_pid) is not None:
            raise BoundsUnavailable(f"process {root_pid} did not join its run's cgroup")
        self._on_breach = on_breach
        self._handle = self._poller.add(f"cgroup-{root_pid}", self._probe)

    def _probe(self) -> float | None:
        with self._lock:
            if self._final is not None or self._breached:
                return None
            current = self._cg.current()
            if current is not None:
                self._sampled_peak = max(self._sampled_peak, current)
            if self._cg.oom_kills() == 0:
                return self._interval
            # The callback goes first: the daemon then knows why before it sees the exit.
            self._breached = True
            try:
                if self._on_breach is not None:
                    how = "the kernel stopped it at its cgroup's limit"
                    self._on_breach(Breach("memory_limit", breach_detail(self._limits, None, how)))
            finally:
                self._cg.kill(KILL_TIMEOUT)
        return None

    def kill(self) -> None:
        with self._lock:
            if self._final is None and not self._cg.kill(KILL_TIMEOUT):
                log.error("run_kill_incomplete", cgroup=str(self._cg.nodes[0].directory))

    def pids(self) -> list[int]:
        return fs.read_procs(self._cg.nodes[0].directory)

    def report(self) -> BoundsReport:
        with self._lock:
            return self._final if self._final is not None else self._read_report()

    def _read_report(self) -> BoundsReport:
        peak, source = self._cg.peak()
        if peak is None:
            peak, source = self._sampled_peak or self._cg.current(), "sampled memory usage"
        oom_kills = self._cg.oom_kills()
        return BoundsReport(
            mechanism=self._cg.mechanism,
            peak_bytes=peak,
            peak_source=source,
            memory_limit_hit=self._breached or oom_kills > 0,
            oom_kills=oom_kills,
            pids_limit_hit=self._cg.pids_hit(),
        )

    def close(self) -> None:
        """Kill what is left, keep the final report, remove the cgroups (idempotent)."""
        if self._handle is not None:
            self._handle.cancel()
        with self._lock:
            if self._final is not None:
                return
            killed = self._cg.kill(KILL_TIMEOUT)
            self._final = self._read_report()
            if not (killed and remove(self._cg.nodes, RMDIR_TIMEOUT)):
                # Left for the next start-up sweep rather than blocking the daemon here.
                log.error("run_cgroup_not_removed", cgroup=str(self._cg.nodes[0].directory))


class CgroupProvider:
    """Creates run cgroups under ``bases`` (one per hierarchy) and sweeps dead daemons' runs."""

    def __init__(
        self,
        mechanism: Mechanism,
        detail: str,
        bases: Sequence[Node],
        factory: CgroupFactory,
        poller: Poller,
        *,
        prepare: Callable[[Path], None] = lambda _directory: None,
        poll_interval: float = 0.05,
    ) -> None:
        self._mechanism = mechanism
        self._detail = detail
        self._bases = tuple(bases)
        self._factory = factory
        self._poller = poller
        self._prepare = prepare
        self._interval = poll_interval
        self._instance = fs.instance_name()
        self._instances = tuple(base.child(self._instance) for base in self._bases)
        for node in self._instances:
            node.directory.mkdir(exist_ok=True)
            prepare(node.directory)

    @property
    def mechanism(self) -> Mechanism:
        return self._mechanism

    @property
    def detail(self) -> str:
        return self._detail

    def create(self, limits: Limits) -> CgroupRun:
        # Another provider of this process (a one-shot engine) may have closed the shared
        # instance directory meanwhile.
        for node in self._instances:
            if not node.directory.is_dir():
                node.directory.mkdir(exist_ok=True)
                self._prepare(node.directory)
        name = f"r{next(_RUN_NUMBERS)}"
        nodes = tuple(instance.child(name) for instance in self._instances)
        return CgroupRun(self._factory(nodes), limits, self._poller, self._interval)

    def sweep(self) -> int:
        """Kill and remove the runs of daemon instances that no longer exist."""
        removed = 0
        names = {p.name for base in self._bases for p in _subdirs(base.directory)}
        for instance in sorted(names):
            if instance == self._instance or not fs.owner_dead(instance):
                continue
            owners = tuple(base.child(instance) for base in self._bases)
            runs = {p.name for owner in owners for p in _subdirs(owner.directory)}
            for run in sorted(runs):
                nodes = tuple(owner.child(run) for owner in owners)
                cgroup = self._factory(nodes)
                cgroup.kill(KILL_TIMEOUT)
                if remove(cgroup.nodes, RMDIR_TIMEOUT):
                    removed += 1
            remove(owners, RMDIR_TIMEOUT)
            log.warning("swept_leftover_runs", instance=instance, runs=len(runs))
        return removed

    def close(self) -> None:
        # Runs still open keep their instance directory busy: no point waiting for them.
        remove(self._instances, 0.1)


def _subdirs(directory: Path) -> list[Path]:
    try:
        return [p for p in directory.iterdir() if p.is_dir()]
    except FileNotFoundError:
        return []
