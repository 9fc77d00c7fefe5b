"""What a run's guards conclude from what its bounds saw (the bounds themselves are tested
for real in tests/integration/test_run_bounds.py; a host-wide OOM kill is not something a
test may cause, so its rule is checked here on recorded reports)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from sandbox_executor.outcome import Tripped
from sandbox_executor.proctree import pss_anon_shmem_bytes
from sandbox_executor.run_bounds import BoundsReport, Breach, BreachCallback, Limits, Mechanism
from sandbox_executor.run_guards import GuardedRun

MIB = 1 << 20
LIMITS = Limits(256 * MIB, 64)


@dataclass
class RecordedBounds:
    """A RunBounds that replays a report."""

    report_value: BoundsReport
    on_breach: BreachCallback | None = None
    closed: bool = False
    killed: int = 0
    started: list[int] = field(default_factory=list)

    @property
    def mechanism(self) -> Mechanism:
        return self.report_value.mechanism

    @property
    def join_paths(self) -> tuple[str, ...]:
        return ()

    def start(self, root_pid: int, on_breach: BreachCallback | None = None) -> None:
        self.started.append(root_pid)
        self.on_breach = on_breach

    def kill(self) -> None:
        self.killed += 1

    def pids(self) -> list[int]:
        return []

    def report(self) -> BoundsReport:
        return self.report_value

    def close(self) -> None:
        self.closed = True


def _report(mechanism: Mechanism = "watchdog", *, hit: bool = False, oom_kills: int = 0) -> BoundsReport:
    return BoundsReport(mechanism, 100 * MIB, "sampled", hit, oom_kills, False)


@pytest.mark.parametrize(
    ("report", "returncode", "timed_out", "memory"),
    [
        (_report(), 0, False, False),
        (_report(oom_kills=1), 137, False, True),  # bwrap: its init died of SIGKILL
        (_report(oom_kills=1), -9, False, True),  # no bwrap: the interpreter itself
        (_report(oom_kills=1), 137, True, False),  # our own kill at the deadline
        (_report(oom_kills=1), 1, False, False),  # someone else's OOM kill; the run exited
        (_report(oom_kills=0), 137, False, False),  # a SIGKILL, but nobody ran out of memory
        (_report("cgroup_v1", hit=True, oom_kills=1), 1, False, True),  # in its own cgroup
    ],
    ids=["nothing", "oom-bwrap", "oom-bare", "deadline", "exited", "plain-kill", "cgroup"],
)
def test_memory_is_tripped_by_the_limit_or_the_kernels_oom_killer(
    report: BoundsReport, returncode: int, timed_out: bool, memory: bool
) -> None:
    guarded = GuardedRun(RecordedBounds(report), LIMITS, None)
    seen = guarded.report(returncode, timed_out=timed_out)
    assert (Tripped.MEMORY in seen.tripped) is memory
    if memory:
        assert seen.notes and ("Memory limit exceeded" in seen.notes[0] or "OOM killer" in seen.notes[0])


def test_a_breach_is_named_by_its_own_line_and_the_run_closed_once() -> None:
    bounds = RecordedBounds(_report(hit=True))
    guarded = GuardedRun(bounds, LIMITS, None)
    guarded.start(4242)
    assert bounds.started == [4242] and bounds.on_breach is not None
    bounds.on_breach(Breach("memory_limit", "Memory limit exceeded: the line of the breach"))
    seen = guarded.report(-9, timed_out=False)
    assert seen.tripped == Tripped.MEMORY and seen.notes == ("Memory limit exceeded: the line of the breach",)
    assert seen.peak_bytes == 100 * MIB
    guarded.close()
    guarded.close()
    assert bounds.closed


def test_proportional_memory_is_read_from_smaps_rollup() -> None:
    rollup = (
        b"55d0c0a00000-7ffd1c9f0000 ---p 00000000 00:00 0  [rollup]\n"
        b"Rss:              412340 kB\nPss:              120000 kB\n"
        b"Pss_Anon:         100000 kB\nPss_File:          15000 kB\nPss_Shmem:          5000 kB\n"
    )
    assert pss_anon_shmem_bytes(rollup) == 105000 * 1024
    # Kernels before 5.7 give the whole Pss only.
    assert pss_anon_shmem_bytes(b"Rss: 10 kB\nPss: 7 kB\n") == 7 * 1024
