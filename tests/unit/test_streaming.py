"""The per-execution event log: order, ids, coalescing, UTF-8 across chunks, caps, resume,
retention, and a producer that never waits for subscribers."""

from __future__ import annotations

import asyncio
import io
import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandbox_executor.capture import BoundedCapture
from sandbox_executor.models import ExecutionResult, Metrics, Status, TerminationReason
from sandbox_executor.streaming import FLUSH_BYTES, FLUSH_INTERVAL_SECONDS, Event, EventLog, EventLogs, relay


def _result(stdout: str = "", stderr: str = "", **extra: object) -> ExecutionResult:
    return ExecutionResult(
        status=Status.SUCCESS,
        exit_code=0,
        stdout=stdout,
        stderr=stderr,
        execution_time=0.5,
        metrics=Metrics(duration_ms=500.0),
        termination_reason=TerminationReason.EXITED,
        **extra,  # type: ignore[arg-type]
    )


def _output(events: list[Event], stream: str) -> str:
    return "".join(json.loads(e.data)["data"] for e in events if e.kind == stream)


async def _collect(log: EventLog, after: int = 0) -> list[Event]:
    return [e async for e in log.follow(after) if e is not None]


async def test_events_in_order_with_increasing_ids_and_one_result_last() -> None:
    logs = EventLogs(max_output_bytes=1 << 20)
    log = logs.open("exec_1")
    log.status("running")
    log.write("stdout", b"hello\n")
    log.write("stderr", b"warn\n")
    result = _result("hello\n", "warn\n", return_value={"x": [1, "é"]})
    log.finish(result)
    events = await _collect(log)
    assert [e.id for e in events] == list(range(1, len(events) + 1))
    assert [e.kind for e in events] == ["status", "status", "stdout", "stderr", "result"]
    assert [json.loads(e.data) for e in events[:2]] == [{"status": "queued"}, {"status": "running"}]
    assert json.loads(events[2].data) == {"data": "hello\n"}
    # The result event is the body of ?wait=true: the result plus its execution id.
    assert json.loads(events[-1].data) == {"execution_id": "exec_1", **result.model_dump(mode="json")}
    # Nothing is accepted once the result is in.
    log.write("stdout", b"late")
    log.status("running")
    assert log.last_id == len(events)


async def test_output_after_quiet_goes_out_at_once_and_a_burst_is_coalesced() -> None:
    log = EventLog("e", 1 << 20)
    received: list[tuple[float, Event]] = []

    async def subscriber() -> None:
        async for event in log.follow():
            assert event is not None
            received.append((time.monotonic(), event))

    task = asyncio.create_task(subscriber())
    await asyncio.sleep(0)
    written = time.monotonic()
    for n in range(50):
        log.write("stdout", f"{n},".encode())
    await asyncio.sleep(FLUSH_INTERVAL_SECONDS * 2)
    # The first write after a quiet period is published at once; the 49 that follow
    # within the interval make one more event, published when the interval ends.
    assert [json.loads(e.data)["data"] for _, e in received] == ["0,", "".join(f"{n}," for n in range(1, 50))]
    # (upper bounds leave room for a loaded machine's scheduling)
    assert received[0][0] - written < 0.05
    assert FLUSH_INTERVAL_SECONDS * 0.9 <= received[1][0] - written < FLUSH_INTERVAL_SECONDS + 0.1
    # Quiet again: the next write goes out at once too.
    await asyncio.sleep(FLUSH_INTERVAL_SECONDS)
    again = time.monotonic()
    log.write("stdout", b"later")
    await asyncio.sleep(0.01)
    assert len(received) == 3 and received[2][0] - again < 0.05
    log.finish(_result("".join(f"{n}," for n in range(50)) + "later"))
    await asyncio.wait_for(task, 1)
    assert received[-1][1].kind == "result"


async def test_a_large_write_is_published_at_once_in_bounded_events() -> None:
    log = EventLog("e", 1 << 20)
    log._last_flush = asyncio.get_running_loop().time()  # as if the timer had just run
    log.write("stdout", b"a" * (FLUSH_BYTES * 3 + 5))
    # Published without waiting for the timer, in events of at most FLUSH_BYTES.
    sizes = [len(json.loads(e.data)["data"]) for e in log.events_after(0)]
    assert sizes == [FLUSH_BYTES, FLUSH_BYTES, FLUSH_BYTES, 5]
    log.write("stdout", b"b" * 10)
    assert len(log.events_after(0)) == 4
    await asyncio.sleep(FLUSH_INTERVAL_SECONDS * 1.5)
    assert len(log.events_after(0)) == 5


async def test_multibyte_characters_split_across_chunks_and_flushes_survive() -> None:
    log = EventLog("e", 1 << 20)
    text = "é€😀 done"
    raw = text.encode()
    for i in range(len(raw)):
        log.write("stdout", raw[i : i + 1])
        log._flush()  # a timer firing between every byte
    log.finish(_result(text))
    events = log.events_after(0)
    assert _output(events, "stdout") == text
    assert "\ufffd" not in _output(events, "stdout")


@settings(max_examples=300, deadline=None)
@given(
    chunks=st.lists(st.binary(max_size=40), max_size=30),
    flush_after=st.lists(st.booleans(), max_size=30),
    cap=st.integers(min_value=1, max_value=400),
    attach_at=st.integers(min_value=0, max_value=3),
)
def test_stream_text_equals_the_results_one_shot_decode_of_the_captured_bytes(
    chunks: list[bytes], flush_after: list[bool], cap: int, attach_at: int
) -> None:
    async def scenario() -> None:
        log = EventLog("e", cap)
        capture = BoundedCapture(cap)
        for n, chunk in enumerate(chunks):
            if n == attach_at:
                # The log is attached to a capture that may already hold a warm start's output.
                capture.attach(lambda data: log.write("stdout", data))
            capture.data_received(chunk)
            if n < len(flush_after) and flush_after[n]:
                log._flush()
        if attach_at >= len(chunks):
            capture.attach(lambda data: log.write("stdout", data))
        stdout = capture.data().decode("utf-8", "replace")
        before = _output(log.events_after(0), "stdout")
        log.finish(_result(stdout, stdout_truncated=capture.truncated))
        events = log.events_after(0)
        # Incremental decoding (invalid bytes replaced) gives the text the result holds.
        assert _output(events, "stdout") == stdout
        assert stdout.startswith(before)
        flagged = [e for e in events if e.kind == "stdout" and json.loads(e.data).get("truncated")]
        assert len(flagged) == (1 if capture.truncated else 0)
        assert log.truncated("stdout") == capture.truncated

    asyncio.run(scenario())


async def test_cap_keeps_the_captured_prefix_and_flags_truncation_once() -> None:
    cap = 1000
    log = EventLog("e", cap)
    for _ in range(10):
        log.write("stderr", b"x" * 300)
    log.finish(_result(stderr="x" * cap, stderr_truncated=True))
    events = [e for e in log.events_after(0) if e.kind == "stderr"]
    assert _output(events, "stderr") == "x" * cap
    assert [json.loads(e.data).get("truncated", False) for e in events].count(True) == 1
    # The flag is on the event after which bytes were dropped: the last one.
    assert json.loads(events[-1].data)["truncated"] is True


async def test_finished_log_shares_its_text_with_the_result() -> None:
    log = EventLog("e", 1 << 20)
    log.write("stdout", b"one ")
    log._flush()
    log.write("stdout", b"two")
    before = [e.data for e in log.events_after(0)]
    # A timeout appends its note to stderr after the captured text: still a prefix match.
    log.write("stderr", b"err")
    log.finish(_result("one two", "err\nExecution timeout after 1 seconds"))
    after = log.events_after(0)
    assert [e.data for e in after[: len(before)]] == before
    assert all(entry.text is None for entry in log._entries if hasattr(entry, "text"))
    assert _output(after, "stderr") == "err"


async def test_output_that_differs_from_the_result_keeps_its_own_text() -> None:
    log = EventLog("e", 1 << 20)
    log.write("stdout", b"streamed")
    log.finish(_result("something else"))
    assert _output(log.events_after(0), "stdout") == "streamed"


async def test_resume_after_an_id_gives_exactly_the_later_events() -> None:
    log = EventLog("e", 1 << 20)
    log.status("queued")
    for n in range(5):
        log.write("stdout", f"{n}\n".encode())
        log._flush()
    log.finish(_result("".join(f"{n}\n" for n in range(5))))
    everything = await _collect(log)
    for after in range(len(everything) + 2):
        assert await _collect(log, after) == everything[after:]


async def test_live_subscribers_get_kept_then_live_events_and_end_after_the_result() -> None:
    log = EventLog("e", 1 << 20)
    log.status("queued")
    early = asyncio.create_task(_collect(log))
    await asyncio.sleep(0.01)
    log.status("running")
    log.write("stdout", b"x")
    await asyncio.sleep(FLUSH_INTERVAL_SECONDS * 1.5)
    late = asyncio.create_task(_collect(log, after=1))
    await asyncio.sleep(0.01)
    log.finish(_result("x"))
    a, b = await asyncio.wait_for(asyncio.gather(early, late), 1)
    assert [e.kind for e in a] == ["status", "status", "stdout", "result"]
    assert b == a[1:]


async def test_idle_subscribers_get_keepalive_ticks() -> None:
    log = EventLog("e", 1 << 20)
    ticks = 0
    async for event in log.follow(0, idle_timeout=0.05):
        if event is None:
            ticks += 1
            if ticks == 3:
                log.finish(_result())
    assert ticks == 3


async def test_release_ends_subscribers_and_frees_the_events() -> None:
    logs = EventLogs(max_output_bytes=1 << 20)
    log = logs.open("a")
    queued = log.events_after(0)
    waiting = asyncio.create_task(_collect(log))
    await asyncio.sleep(0.01)
    logs.open("b")
    logs.retain({"b": object()})
    # The subscriber had the queued event and ends at the release, without a result.
    assert await asyncio.wait_for(waiting, 1) == queued
    assert log.released and log.events_after(0) == [] and logs.get("a") is None
    assert logs.get("b") is not None and len(logs) == 1
    # A released log takes nothing more.
    log.write("stdout", b"x" * 100)
    assert log.last_id == 0


async def test_discard_releases_one_log() -> None:
    logs = EventLogs(max_output_bytes=1 << 20)
    a, b = logs.open("a"), logs.open("b")
    logs.discard("a")
    logs.discard("never-opened")
    assert a.released and not b.released and logs.get("a") is None and len(logs) == 1


async def test_open_is_idempotent_for_a_replayed_execution_id() -> None:
    logs = EventLogs(max_output_bytes=1 << 20)
    assert logs.open("a") is logs.open("a")
    assert logs.open("a").last_id == 1


async def test_a_subscriber_that_never_reads_costs_the_producer_nothing() -> None:
    """The producer appends; nothing it does depends on how many subscribers lag."""
    cap = 10 * 1024 * 1024
    chunk = b"y" * 65536

    async def flood(subscribers: int) -> float:
        log = EventLog("e", cap)
        log.status("running")
        stalled = [log.follow(0) for _ in range(subscribers)]
        for gen in stalled:
            await gen.__anext__()  # started, then never read again
        started = time.perf_counter()
        for _ in range(cap // len(chunk) + 16):
            log.write("stdout", chunk)
        log.finish(_result("y" * cap))
        elapsed = time.perf_counter() - started
        for gen in stalled:
            await gen.aclose()
        return elapsed

    baseline = min([await flood(0) for _ in range(3)])
    with_stalled = min([await flood(100) for _ in range(3)])
    # Same work either way (measured: a few ms for 10 MiB); generous bound for a busy box.
    assert with_stalled < baseline * 3 + 0.05, (baseline, with_stalled)


@pytest.mark.parametrize("status", ["queued", "running"])
def test_status_events_carry_the_status(status: str) -> None:
    log = EventLog("e", 10)
    log.status(status)  # type: ignore[arg-type]
    assert json.loads(log.events_after(0)[0].data) == {"status": status}


async def test_relay_copies_output_live_until_the_result() -> None:
    log = EventLog("e", 1 << 20)
    out, err = io.BytesIO(), io.BytesIO()
    task = asyncio.create_task(relay(log, out, err))
    log.status("running")
    log.write("stdout", "héllo ".encode())
    log.write("stderr", b"oops\n")
    await asyncio.sleep(FLUSH_INTERVAL_SECONDS * 1.5)
    assert (out.getvalue(), err.getvalue()) == ("héllo ".encode(), b"oops\n")
    assert not task.done()
    log.write("stdout", b"world\n")
    log.finish(_result("héllo world\n", "oops\n"))
    await asyncio.wait_for(task, 1)
    assert out.getvalue() == "héllo world\n".encode()
