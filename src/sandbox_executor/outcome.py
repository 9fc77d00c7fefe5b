"""How a run ended, decided from plain facts: a pure function with a table-driven test.

:func:`classify` takes what the sandbox observed (:class:`RunFacts`: exit status, the
deadline, the start marker, the result channel, stderr, limits an outside watcher saw
tripped) and returns the :class:`Verdict`: status, termination_reason, exit_code, error,
return value and the stderr to report.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any

from .models import Status, TerminationReason, json_problem

TIMEOUT_MESSAGE = "Execution timeout after {seconds} seconds"
# Markers interpreters print when an allocation fails under the memory rlimit; only the
# end of stderr counts (the interpreter's dying words, not anything printed on the way).
MEMORY_MARKERS = (
    "JavaScript heap out of memory",
    "Fatal process out of memory",
    "Allocation failed",
    "xmalloc: cannot allocate",
    "xrealloc: cannot allocate",
    "Cannot allocate memory",
    "MemoryError",
)
MEMORY_MARKER_WINDOW = 8192


class Tripped(enum.Flag):
    """Limits that a watcher outside the sandbox saw tripped during the run."""

    NONE = 0
    MEMORY = enum.auto()  # the run's memory bound (cgroup OOM, watchdog)
    DISK = enum.auto()  # the run's workspace write cap


# A tripped limit names the reason of a run that did not succeed; memory before disk.
_TRIPPED: tuple[tuple[Tripped, TerminationReason, str], ...] = (
    (Tripped.MEMORY, TerminationReason.MEMORY_LIMIT, "The execution exceeded its memory limit."),
    (Tripped.DISK, TerminationReason.DISK_LIMIT, "The execution exceeded its workspace write limit."),
)
# ...and fails one that did: what it wrote stays in the workspace, so a run quick enough
# to finish between two probes must not pass the cap. (A process of the run killed for
# memory, which the handler survived, leaves nothing behind.)
_SPOILS_SUCCESS = Tripped.DISK


@dataclass(frozen=True)
class RunFacts:
    """What was observed of one run."""

    returncode: int
    timed_out: bool
    timeout_seconds: int
    # The bootstrap wrote its start marker: bwrap set the sandbox up, the interpreter ran.
    started: bool
    stderr: str
    # The runtime reports a handler outcome on the result channel (python, javascript).
    uses_channel: bool = False
    # The result channel after the start marker, and whether it overflowed its cap.
    channel: bytes = b""
    channel_truncated: bool = False
    tripped: Tripped = Tripped.NONE
    # The watcher's own lines on the limits it saw tripped (most decisive first): appended
    # to stderr when a tripped limit decides the verdict, the first one is its error.
    limit_notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Verdict:
    status: Status
    termination_reason: TerminationReason
    exit_code: int
    stderr: str
    error: str | None = None
    return_value: Any = None


def classify(facts: RunFacts) -> Verdict:
    """The verdict on one run (first matching row of the table below)."""
    verdict = _base(facts)
    decides = facts.tripped if verdict.status in (Status.FAILED, Status.CRASHED) else Tripped.NONE
    if verdict.status == Status.SUCCESS:
        decides = facts.tripped & _SPOILS_SUCCESS
    if decides:
        for flag, reason, message in _TRIPPED:
            if flag in decides:
                code = facts.returncode or 1
                if not facts.limit_notes:
                    return Verdict(Status.FAILED, reason, code, verdict.stderr, message)
                sep = "\n" if verdict.stderr and not verdict.stderr.endswith("\n") else ""
                stderr = verdict.stderr + sep + "".join(f"{note}\n" for note in facts.limit_notes)
                return Verdict(Status.FAILED, reason, code, stderr, facts.limit_notes[0])
    return verdict


def _base(f: RunFacts) -> Verdict:
    rc, stderr = f.returncode, f.stderr
    if f.timed_out:
        suffix = TIMEOUT_MESSAGE.format(seconds=f.timeout_seconds)
        sep = "\n" if stderr and not stderr.endswith("\n") else ""
        return Verdict(Status.TIMEOUT, TerminationReason.TIMEOUT, -1, stderr + sep + suffix, suffix)
    if not f.started:
        # The interpreter never ran: bwrap itself failed (workspace missing, namespaces
        # refused, interpreter absent). Not the user's failure: `crashed`.
        detail = stderr.strip()[-500:] or f"exit {rc}"
        error = "the sandbox could not be created: " + detail
        return Verdict(Status.CRASHED, TerminationReason.SANDBOX_ERROR, -1, stderr, error)
    if f.channel_truncated:
        error = "the result channel exceeded its cap (the return value is too large)"
        return Verdict(Status.FAILED, TerminationReason.EXITED, rc or 1, stderr, error)
    outcome = parse_outcome(f.channel) if f.uses_channel else None
    if outcome is not None and outcome.get("ok") is True and rc == 0:
        value = outcome.get("return_value")
        # The result channel is written by user code: what it holds must still make a
        # valid JSON answer and callback (no lone surrogates, bounded depth).
        problem = json_problem(value)
        if problem is None:
            return Verdict(Status.SUCCESS, TerminationReason.EXITED, 0, stderr, return_value=value)
        error = f"The handler's return value cannot be reported: it {problem}."
        return Verdict(Status.FAILED, TerminationReason.EXITED, 1, f"{stderr}{error}\n", error)
    if outcome is not None and outcome.get("ok") is False:
        memory = outcome.get("error_type") == "MemoryError"
        reason = TerminationReason.MEMORY_LIMIT if memory else TerminationReason.EXITED
        message = _text(str(outcome.get("error", ""))[-2000:]) or None
        return Verdict(Status.FAILED, reason, rc or 1, stderr, message)
    if rc == 0:
        return Verdict(Status.SUCCESS, TerminationReason.EXITED, 0, stderr)
    reason = TerminationReason.SIGNALED if rc < 0 or rc > 128 else TerminationReason.EXITED
    tail = stderr[-MEMORY_MARKER_WINDOW:]
    if any(marker in tail for marker in MEMORY_MARKERS):
        reason = TerminationReason.MEMORY_LIMIT
    return Verdict(Status.FAILED, reason, rc, stderr)


def parse_outcome(raw: bytes) -> dict[str, Any] | None:
    """The handler's outcome document, or None when the channel holds no JSON object."""
    if not raw:
        return None
    try:
        # NaN/Infinity are not JSON (the control plane rejects them); hostile nesting ends
        # in RecursionError, not ValueError.
        doc = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _text(value: str) -> str:
    """``value`` with lone surrogates (from user-written JSON escapes) replaced."""
    return value.encode("utf-8", "replace").decode("utf-8")
