"""The verdict on a run, row by row: every branch of outcome.classify."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sandbox_executor.models import Status, TerminationReason
from sandbox_executor.outcome import RunFacts, Tripped, classify, parse_outcome

OK = json.dumps({"ok": True, "return_value": {"a": 1}}).encode()
RAISED = json.dumps({"ok": False, "error_type": "ValueError", "error": "ValueError: bad"}).encode()
OOM = json.dumps({"ok": False, "error_type": "MemoryError", "error": "MemoryError: x"}).encode()
SURROGATE = b'{"ok": true, "return_value": "\\ud800"}'
DEEP = b'{"ok": true, "return_value": ' + b"[" * 200 + b"]" * 200 + b"}"

S, F, T, C = Status.SUCCESS, Status.FAILED, Status.TIMEOUT, Status.CRASHED
EXITED, SIGNALED = TerminationReason.EXITED, TerminationReason.SIGNALED
MEM, DISK = TerminationReason.MEMORY_LIMIT, TerminationReason.DISK_LIMIT

# (name, facts, status, reason, exit_code, error (substring, or None for no error))
ROWS: list[tuple[str, dict[str, Any], Status, TerminationReason, int, str | None]] = [
    ("timeout wins over everything", {"timed_out": True, "returncode": -9, "channel": OK}, T,
     TerminationReason.TIMEOUT, -1, "Execution timeout after 7 seconds"),
    ("never started: bwrap failed", {"started": False, "returncode": 1, "stderr": "bwrap: boom"}, C,
     TerminationReason.SANDBOX_ERROR, -1, "the sandbox could not be created: bwrap: boom"),
    ("never started, silent", {"started": False, "returncode": 127}, C,
     TerminationReason.SANDBOX_ERROR, -1, "exit 127"),
    ("result channel overflowed", {"channel_truncated": True, "returncode": 0}, F, EXITED, 1,
     "exceeded its cap"),
    ("result channel overflowed, exit kept", {"channel_truncated": True, "returncode": 3}, F, EXITED, 3,
     "exceeded its cap"),
    ("handler returned", {"channel": OK}, S, EXITED, 0, None),
    ("handler returned, then the process failed", {"channel": OK, "returncode": 2}, F, EXITED, 2, None),
    ("return value with a lone surrogate", {"channel": SURROGATE}, F, EXITED, 1, "lone surrogate"),
    ("return value nested too deep", {"channel": DEEP}, F, EXITED, 1, "nested deeper"),
    ("handler raised", {"channel": RAISED, "returncode": 1}, F, EXITED, 1, "ValueError: bad"),
    ("handler raised, exit 0 made 1", {"channel": RAISED}, F, EXITED, 1, "ValueError: bad"),
    ("handler ran out of memory", {"channel": OOM, "returncode": 1}, F, MEM, 1, "MemoryError"),
    ("no outcome, exit 0 (shell)", {"uses_channel": False}, S, EXITED, 0, None),
    ("garbage on the channel, exit 0", {"channel": b"not json"}, S, EXITED, 0, None),
    ("no outcome, exit 3", {"uses_channel": False, "returncode": 3}, F, EXITED, 3, None),
    ("killed by a signal", {"uses_channel": False, "returncode": -9}, F, SIGNALED, -9, None),
    ("shell reports a signal as 128+n", {"uses_channel": False, "returncode": 137}, F, SIGNALED, 137, None),
    ("allocation failure on stderr", {"uses_channel": False, "returncode": 134,
     "stderr": "FATAL ERROR: JavaScript heap out of memory\n"}, F, MEM, 134, None),
    ("memory marker long before the end", {"uses_channel": False, "returncode": 1,
     "stderr": "MemoryError\n" + "x" * 9000}, F, EXITED, 1, None),
    ("watcher saw memory tripped", {"uses_channel": False, "returncode": -9,
     "tripped": Tripped.MEMORY}, F, MEM, -9, "memory limit"),
    ("watcher saw the disk cap tripped", {"channel": RAISED, "returncode": 1,
     "tripped": Tripped.DISK}, F, DISK, 1, "write limit"),
    ("memory named before disk", {"returncode": 1, "tripped": Tripped.MEMORY | Tripped.DISK}, F, MEM,
     1, "memory limit"),
    ("a tripped limit at start is still the limit", {"started": False, "returncode": -9,
     "tripped": Tripped.MEMORY}, F, MEM, -9, "memory limit"),
    ("a process killed for memory does not spoil a success", {"channel": OK, "tripped": Tripped.MEMORY},
     S, EXITED, 0, None),
    ("a run past its write cap fails though it exited 0", {"channel": OK, "tripped": Tripped.DISK}, F,
     DISK, 1, "write limit"),
    ("a tripped limit does not hide the deadline", {"timed_out": True, "tripped": Tripped.MEMORY}, T,
     TerminationReason.TIMEOUT, -1, "timeout"),
]  # fmt: skip


def _facts(**overrides: Any) -> RunFacts:
    values: dict[str, Any] = {
        "returncode": 0,
        "timed_out": False,
        "timeout_seconds": 7,
        "started": True,
        "stderr": "",
        "uses_channel": True,
        "channel": b"",
    }
    values.update(overrides)
    return RunFacts(**values)


@pytest.mark.parametrize(("facts", "status", "reason", "exit_code", "error"), [r[1:] for r in ROWS],
                         ids=[r[0] for r in ROWS])  # fmt: skip
def test_row(
    facts: dict[str, Any], status: Status, reason: TerminationReason, exit_code: int, error: str | None
) -> None:
    verdict = classify(_facts(**facts))
    assert (verdict.status, verdict.termination_reason, verdict.exit_code) == (status, reason, exit_code)
    if error is None:
        assert verdict.error is None
    else:
        assert verdict.error is not None and error in verdict.error


def test_every_reason_but_shutdown_has_a_row() -> None:
    # Shutdown and restart are decided by the service, never from a run's facts.
    covered = {row[3] for row in ROWS}
    assert covered == set(TerminationReason) - {TerminationReason.SHUTDOWN, TerminationReason.RESTARTED}


def test_the_watchers_lines_end_stderr_and_the_first_is_the_error() -> None:
    memory = "Memory limit exceeded: the run used more than 256 MiB in total across its processes"
    disk = "workspace write limit reached: the run added 20 MiB"
    facts = _facts(returncode=-9, stderr="partial", tripped=Tripped.MEMORY | Tripped.DISK,
                   limit_notes=(memory, disk))  # fmt: skip
    verdict = classify(facts)
    assert verdict.termination_reason == MEM and verdict.error == memory
    assert verdict.stderr == f"partial\n{memory}\n{disk}\n"
    # A tripped limit that does not decide the verdict adds nothing.
    assert (
        classify(_facts(channel=OK, stderr="x", tripped=Tripped.MEMORY, limit_notes=(memory,))).stderr == "x"
    )


def test_success_carries_the_return_value() -> None:
    assert classify(_facts(channel=OK)).return_value == {"a": 1}
    assert classify(_facts(channel=SURROGATE)).return_value is None


@pytest.mark.parametrize(("stderr", "expected"), [("", "Execution timeout after 7 seconds"),
                         ("partial", "partial\nExecution timeout after 7 seconds"),
                         ("line\n", "line\nExecution timeout after 7 seconds")])  # fmt: skip
def test_timeout_message_is_appended_to_stderr(stderr: str, expected: str) -> None:
    assert classify(_facts(timed_out=True, stderr=stderr)).stderr == expected


def test_unreportable_value_says_why_on_stderr() -> None:
    verdict = classify(_facts(channel=DEEP, stderr="out\n"))
    assert verdict.stderr.startswith("out\nThe handler's return value cannot be reported")


def test_error_text_is_the_tail_and_valid_unicode() -> None:
    doc = {"ok": False, "error_type": "E", "error": "x" * 5000 + "\ud800 end"}
    verdict = classify(_facts(channel=json.dumps(doc).encode(), returncode=1))
    assert verdict.error is not None and len(verdict.error) == 2000 and verdict.error.endswith("? end")


@pytest.mark.parametrize("raw", [b"", b"[1]", b"nope", b'{"v": NaN}', b"[" * 100000])
def test_parse_outcome_refuses_what_is_not_a_json_object(raw: bytes) -> None:
    assert parse_outcome(raw) is None


def test_parse_outcome_reads_an_object() -> None:
    assert parse_outcome(b'{"ok": true}') == {"ok": True}
