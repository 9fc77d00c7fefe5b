"""The interface every per-run bounds mechanism offers (cgroup v2, cgroup v1, watchdog).

Lifecycle of one run (cold or warm sandbox alike):

1. ``provider.create(limits)`` BEFORE the sandbox is spawned, so a warm sandbox is born
   inside its run's bounds;
2. in the forked child, before dropping privileges and before Landlock: write ``"0"`` to
   each of ``run.join_paths`` (bootstrap/run_join.py ``join_cgroups``); oom_score_adj
   1000 comes from bootstrap/confine (``Confinement(oom_score_adj=SANDBOX_OOM_SCORE_ADJ)``);
3. ``run.start(root_pid, on_breach)`` right after the spawn: from then on the run is
   watched; when the run exceeds its memory limit, ``on_breach`` is called at most once,
   from the poller thread, just BEFORE the whole run is killed (so the daemon knows the
   reason before it sees the exit; hand it to the loop with ``call_soon_threadsafe``);
4. at the end: ``run.report()`` (peak of the whole run, whether the memory limit was hit),
   then ``run.close()`` (kills what is left and removes the cgroups; idempotent).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from ..errors import InternalError

MIB = 1024 * 1024

Mechanism = Literal["cgroup_v2", "cgroup_v1", "watchdog"]


@dataclass(frozen=True)
class Limits:
    """Bounds of one run, all of its processes together."""

    memory_bytes: int
    pids: int


@dataclass(frozen=True)
class Breach:
    """Why a run was stopped by its bounds; ``detail`` is a line fit for the run's stderr."""

    reason: Literal["memory_limit"]
    detail: str


@dataclass(frozen=True)
class BoundsReport:
    """What the bounds saw of a run.

    ``peak_bytes`` is the whole run's peak: the cgroup's own high-water mark (which also
    counts page cache and tmpfs pages the run caused) or, for the watchdog, the largest
    sampled total of resident anonymous + shared memory over the run's processes.
    ``memory_limit_hit``: the run was stopped, or one of its processes killed, for memory.
    ``oom_kills``: kernel OOM kills in the run's cgroup; for the watchdog, OOM kills on the
    whole host during the run (a hint: a SIGKILL the daemon did not send, with this > 0,
    was most likely the kernel choosing the run's oom_score_adj 1000 processes).
    """

    mechanism: Mechanism
    peak_bytes: int | None
    peak_source: str
    memory_limit_hit: bool
    oom_kills: int
    pids_limit_hit: bool


BreachCallback = Callable[[Breach], None]


class BoundsUnavailable(InternalError):
    """The configured mechanism cannot work on this host (said at start-up, with the cause)."""

    error_code = "Executor.BoundsUnavailable"


class RunBounds(Protocol):
    """The bounds of one run (see the module doc for the call order)."""

    @property
    def mechanism(self) -> Mechanism: ...

    @property
    def join_paths(self) -> tuple[str, ...]:
        """cgroup.procs files the forked child writes "0" to before exec (none: watchdog)."""
        ...

    def start(self, root_pid: int, on_breach: BreachCallback | None = None) -> None: ...

    def kill(self) -> None:
        """SIGKILL every process of the run, setsid'd and reparented ones included."""
        ...

    def pids(self) -> list[int]:
        """The run's processes now (for the workspace guard's look at their open files)."""
        ...

    def report(self) -> BoundsReport: ...

    def close(self) -> None: ...


class BoundsProvider(Protocol):
    """The mechanism chosen at start-up; one per daemon."""

    @property
    def mechanism(self) -> Mechanism: ...

    @property
    def detail(self) -> str:
        """One line for /health and ``check``: where the cgroups live, or why the watchdog."""
        ...

    def create(self, limits: Limits) -> RunBounds: ...

    def sweep(self) -> int:
        """Kill and remove what a killed daemon left behind; returns runs removed."""
        ...

    def close(self) -> None: ...


def breach_detail(limits: Limits, used: int | None, how: str) -> str:
    """The stderr line of a memory-limit stop."""
    used_text = f" {used / MIB:.0f} MiB" if used is not None else ""
    return (
        f"Memory limit exceeded: the run used more than {limits.memory_bytes / MIB:.0f} MiB in total "
        f"across its processes ({how}{used_text})"
    )
