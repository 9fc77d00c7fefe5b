"""The memory watchdog: for hosts that give the daemon no writable cgroup.

Every run's processes (the tree under the sandbox's root pid) are found in /proc, and the
sum of their resident anonymous and shared memory is sampled. That sum counts a page a
fork shares copy-on-write once per process, so past the limit it is confirmed: the tree
is stopped (SIGSTOP until no new process appears) and its proportional figure read
(smaps_rollup: a shared page counts 1/N in each of its N sharers); over the limit, the
tree is SIGKILLed, else it continues and later samples are corrected by what the
confirmation showed was shared (confirmed again when the membership changes, after
``RECONFIRM`` seconds, at most every 4 x the confirmation's own cost). A process that
leaves the tree (setsid, double fork, reparented to init) stays a member once seen;
inside bwrap's pid namespace orphans are reparented to the sandbox's own init, so nothing
leaves the tree there. Membership is decided on every tick; memory is read per run at an
interval that shrinks as the run nears its limit: headroom / ``max_rate``, clamped to
[``min_interval``, ``max_interval``]. The overshoot is therefore bounded by about
``max_rate`` x (``min_interval`` + one sample + the kill), see docs in resources notes.
Not seen: pages of tmpfs files no process maps (the sandbox's /tmp has its own size cap).
"""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass, field

import structlog

from ..poller import Poller, PollHandle
from ..proctree import Proc, ProcTable, process_memory, proportional_memory, read_proc
from .base import BoundsReport, Breach, BreachCallback, Limits, Mechanism, breach_detail
from .cgroupfs import process_start, signal_if

log = structlog.get_logger(__name__)

MIN_INTERVAL = 0.005
MAX_INTERVAL = 0.1
# Fastest growth assumed when spacing samples: about two cores faulting in fresh pages
# (1.9 GiB/s each measured on the reference host).
MAX_RATE = 4 << 30
KILL_TIMEOUT = 5.0
# A confirmed figure corrects the cheap sum for this long (copy-on-write pages a fork
# later writes grow the run without growing the sum).
RECONFIRM = 0.25


def global_oom_kills() -> int:
    """The host's OOM kill counter (any cgroup, any process)."""
    try:
        with open("/proc/vmstat", "rb") as fh:
            for line in fh:
                if line.startswith(b"oom_kill "):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass(frozen=True)
class _Confirmed:
    """The proportional figure of a run and the cheap sum it was taken at."""

    used: int
    cheap: int
    epoch: int
    at: float
    next_confirm: float


@dataclass(eq=False)
class WatchdogRun:
    """One run watched by the watchdog (see base.RunBounds)."""

    limits: Limits
    watchdog: Watchdog
    members: dict[int, int] = field(default_factory=dict)
    pending_root: Proc | None = None
    peak: int = 0
    breached: bool = False
    closed: bool = False
    due: float = 0.0
    on_breach: BreachCallback | None = None
    oom_base: int = field(default_factory=global_oom_kills)
    epoch: int = 0  # bumped whenever a process joins or leaves the run
    confirmed: _Confirmed | None = None

    @property
    def mechanism(self) -> Mechanism:
        return "watchdog"

    @property
    def join_paths(self) -> tuple[str, ...]:
        return ()

    def start(self, root_pid: int, on_breach: BreachCallback | None = None) -> None:
        self.on_breach = on_breach
        self.watchdog.watch(self, root_pid)

    def kill(self) -> None:
        self.watchdog.kill(self)

    def pids(self) -> list[int]:
        return list(self.members)

    def report(self) -> BoundsReport:
        oom = max(0, global_oom_kills() - self.oom_base)
        return BoundsReport("watchdog", self.peak, "sampled", self.breached, oom, False)

    def close(self) -> None:
        if not self.closed:
            self.watchdog.kill(self)
            self.watchdog.forget(self)
            self.closed = True


class Watchdog:
    """The runs being watched and the one poller probe that samples them all."""

    def __init__(
        self,
        poller: Poller,
        *,
        min_interval: float = MIN_INTERVAL,
        max_interval: float = MAX_INTERVAL,
        max_rate: float = MAX_RATE,
    ) -> None:
        self._poller = poller
        self.min_interval, self.max_interval, self._rate = min_interval, max_interval, max_rate
        self._lock = threading.RLock()
        self._table = ProcTable()
        self._runs: list[WatchdogRun] = []
        self._probe: PollHandle | None = None
        self.samples = 0
        self.sample_seconds = 0.0

    def watch(self, run: WatchdogRun, root_pid: int) -> None:
        # Only the root is read here (the caller is the event loop); its tree is found by
        # the next tick, whose first process-table read may take a millisecond or more.
        root = read_proc(root_pid)
        with self._lock:
            if root is not None:
                run.members[root_pid] = root[0].start
                run.pending_root = root[0]
            run.due = 0.0
            self._runs.append(run)
            if self._probe is None:
                self._probe = self._poller.add("memory-watchdog", self._tick)

    def forget(self, run: WatchdogRun) -> None:
        with self._lock:
            if run in self._runs:
                self._runs.remove(run)

    def _update(self, extra: WatchdogRun | None = None) -> None:
        # Every watched run sees every refresh: a process new now is new only once.
        fresh, gone = self._table.refresh()
        runs = self._runs if extra is None or extra in self._runs else [*self._runs, extra]
        for run in runs:
            size = len(run.members)
            if run.pending_root is not None:
                run.members.update(self._table.descendants(run.pending_root))
                run.pending_root = None
                run.epoch += 1
            for pid in gone:
                run.members.pop(pid, None)
            for proc in fresh:
                if proc.ppid in run.members:
                    run.members[proc.pid] = proc.start
                    run.epoch += 1
            if len(run.members) < size:
                run.epoch += 1

    def _tick(self) -> float | None:
        return self.tick()

    def tick(self, *, all_due: bool = False) -> float | None:
        """One round: refresh membership, sample the runs that are due (all of them with
        ``all_due``); returns the seconds until the next round, None when nothing is left."""
        with self._lock:
            if all_due:
                for run in self._runs:
                    run.due = 0.0
            if not self._runs:
                self._probe = None
                return None
            began = time.perf_counter()
            self._update()
            now = time.monotonic()
            for run in self._runs:
                if run.breached or run.due > now:
                    continue
                cheap = sum(process_memory(pid) or 0 for pid in list(run.members))
                used = self._measure(run, cheap, now)
                if used is None:  # maybe shared pages counted twice: confirm at the next turn
                    run.due = now + self.min_interval
                    continue
                run.peak = max(run.peak, used)
                headroom = run.limits.memory_bytes - used
                if headroom < 0:
                    self._breach(run, used)
                    continue
                run.due = now + min(self.max_interval, max(self.min_interval, headroom / self._rate))
            self.samples += 1
            self.sample_seconds += time.perf_counter() - began
            self._runs = [run for run in self._runs if not run.breached]
            wait = min((run.due for run in self._runs), default=now + self.max_interval) - now
        return max(0.0, wait)

    def _measure(self, run: WatchdogRun, cheap: int, now: float) -> int | None:
        """The run's memory from ``cheap``, its processes' summed resident memory (exact
        unless a fork shares pages); past the limit, corrected or confirmed (None: not
        yet, confirmations are spaced)."""
        limit = run.limits.memory_bytes
        known = run.confirmed
        if cheap <= limit:
            run.confirmed = None
            return cheap
        if known is not None and known.epoch == run.epoch and now - known.at < RECONFIRM:
            # Same processes: what the sum grew by since the confirmation is new memory.
            estimate = known.used + cheap - known.cheap
            return estimate if estimate <= limit else self._confirm(run, cheap, now)
        if known is not None and now < known.next_confirm:
            return None
        return self._confirm(run, cheap, now)

    def _confirm(self, run: WatchdogRun, cheap: int, now: float) -> int:
        """The proportional figure, read with the tree stopped; resumed if under the limit
        (over it, the tree stays stopped for the kill)."""
        began = time.perf_counter()
        stopped = self._stop(run, time.monotonic() + KILL_TIMEOUT)
        used = sum(_proportional(pid) for pid in list(run.members))
        if used > run.limits.memory_bytes:
            return used
        for pid, start in stopped:
            _signal(pid, start, signal.SIGCONT)
        cost = time.perf_counter() - began
        run.confirmed = _Confirmed(used, cheap, run.epoch, now, now + max(self.min_interval, 4 * cost))
        return used

    def _breach(self, run: WatchdogRun, total: int) -> None:
        # The callback goes first: the daemon then knows why before it sees the exit.
        run.breached = True
        log.warning("run_memory_limit", used=total, limit=run.limits.memory_bytes, mechanism="watchdog")
        try:
            if run.on_breach is not None:
                how = "stopped by the memory watchdog at"
                run.on_breach(Breach("memory_limit", breach_detail(run.limits, total, how)))
        finally:
            self.kill(run)

    def _stop(self, run: WatchdogRun, deadline: float) -> set[tuple[int, int]]:
        """SIGSTOP the whole tree until no new member appears; returns what was stopped."""
        stopped: set[tuple[int, int]] = set()
        while time.monotonic() < deadline:
            # The members known now first: the process table's refresh takes a millisecond
            # or two, which a run growing at GiB/s turns into MiB.
            fresh = {(pid, start) for pid, start in run.members.items()} - stopped
            for pid, start in fresh:
                _signal(pid, start, signal.SIGSTOP)
            stopped |= fresh
            self._update_one(run)
            if not {(pid, start) for pid, start in run.members.items()} - stopped:
                break
        return stopped

    def kill(self, run: WatchdogRun) -> None:
        """Stop the whole tree (SIGSTOP until no new member appears), then SIGKILL it."""
        with self._lock:
            deadline = time.monotonic() + KILL_TIMEOUT
            self._stop(run, deadline)
            while run.members and time.monotonic() < deadline:
                for pid, start in list(run.members.items()):
                    if not _signal(pid, start, signal.SIGKILL):
                        run.members.pop(pid, None)
                self._update_one(run)
                if run.members:
                    time.sleep(0.001)

    def _update_one(self, run: WatchdogRun) -> None:
        # Membership by the table, then a live check: a zombie has nothing left to kill.
        self._update(run)
        for pid, start in list(run.members.items()):
            read = read_proc(pid)
            if read is None or read[0].start != start or read[1] == b"Z":
                run.members.pop(pid, None)
                run.epoch += 1


def _proportional(pid: int) -> int:
    # Unreadable (no ptrace access): the process's whole resident figure, erring high.
    found = proportional_memory(pid)
    return found if found is not None else process_memory(pid) or 0


def _signal(pid: int, start: int, sig: int) -> bool:
    return signal_if(pid, sig, lambda p: process_start(p) == start)


class WatchdogProvider:
    """The watchdog as a bounds provider (see base.BoundsProvider)."""

    def __init__(self, poller: Poller, reason: str, **tuning: float) -> None:
        self.watchdog = Watchdog(poller, **tuning)
        self._reason = reason

    @property
    def mechanism(self) -> Mechanism:
        return "watchdog"

    @property
    def detail(self) -> str:
        return (
            f"memory watchdog: each run's processes sampled every {self.watchdog.min_interval * 1000:.0f}-"
            f"{self.watchdog.max_interval * 1000:.0f} ms, killed past the limit ({self._reason})"
        )

    def create(self, limits: Limits) -> WatchdogRun:
        return WatchdogRun(limits, self.watchdog)

    def sweep(self) -> int:
        # Nothing to find: a dead daemon's sandboxes died with its spawner (bwrap
        # --die-with-parent, PR_SET_PDEATHSIG) and left no cgroup behind.
        return 0

    def close(self) -> None:
        return None
