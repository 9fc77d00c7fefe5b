"""ControlPlaneReporter against the mock control plane of tests/support/mock_control_plane.py.

Requests go through an ``httpx.MockTransport`` and every wait of the reporter (backoff,
replay interval, heartbeat schedule) is a sleep on a virtual clock that the test moves on,
so no test waits for real time; the disk (outbox) is real. Every body the reporter sends is
validated by the mock with the strict models written from docs/CONTRACT.md.
End-to-end tests with a real server and a real daemon: tests/integration/test_reporting_*.py.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbox_executor.config import Settings
from sandbox_executor.control_plane import ControlPlaneReporter, DeliveryStats
from sandbox_executor.control_plane.bodies import result_body
from sandbox_executor.control_plane.outbox import Outbox
from sandbox_executor.metrics import REGISTRY
from sandbox_executor.models import ArtifactDetail, ExecutionResult, Metrics, TerminationReason
from tests.support.contract_models import ResultBody
from tests.support.mock_control_plane import MockControlPlane, VirtualClock

EID = "exec_20260101120000_0123abcd"
TOKEN = "s3cr3t-token-value"
POD = "session-abc-pod"
REPLAY = 0.3  # replay interval of these tests (virtual seconds)
BACKOFF_CAP = 0.05

Factory = Callable[..., Awaitable[ControlPlaneReporter]]


def make_result(**overrides: Any) -> ExecutionResult:
    values: dict[str, Any] = {
        "status": "success",
        "exit_code": 0,
        "stdout": "hello\n",
        "stderr": "",
        "execution_time": 0.125,
        "return_value": {"answer": 42},
        "metrics": Metrics(duration_ms=125.0, cpu_time_ms=30.0, peak_memory_mb=12.5),
        "artifacts": ["out/report.csv"],
        "artifact_details": [
            ArtifactDetail(path="out/report.csv", size=12, mime_type="text/csv", change="created")
        ],
        "termination_reason": "exited",
    }
    values.update(overrides)
    return ExecutionResult(**values)


def settings_for(results_dir: Path, url: str | None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "results_dir": results_dir,
        "control_plane_url": url,
        "internal_api_token": TOKEN,
        "callback_timeout_seconds": 0.5,
        "callback_max_attempts": 4,
        "callback_max_backoff_seconds": BACKOFF_CAP,
        "outbox_replay_interval_seconds": REPLAY,
        "heartbeat_interval_seconds": 0.2,
        "container_id": POD,
        "pod_name": POD,
        "executor_port": 8080,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture
def cp(clock: VirtualClock) -> MockControlPlane:
    return MockControlPlane(clock)


@pytest.fixture
async def reporter_factory(
    tmp_path: Path, cp: MockControlPlane, clock: VirtualClock
) -> AsyncIterator[Factory]:
    made: list[ControlPlaneReporter] = []

    async def factory(url: str | None = cp.url, **overrides: Any) -> ControlPlaneReporter:
        results_dir = overrides.pop("results_dir", tmp_path / "results")
        reporter = ControlPlaneReporter(
            settings_for(results_dir, url, **overrides),
            transport=cp.transport,
            sleep=clock.sleep,
            clock=clock.monotonic,
        )
        await reporter.start()
        made.append(reporter)
        return reporter

    yield factory
    cp.release()
    for reporter in made:
        await reporter.aclose()


def delivered(reporter: ControlPlaneReporter, count: int = 1) -> Callable[[], bool]:
    return lambda: reporter.stats().delivered >= count


def metric(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


# ---------------------------------------------------------------------- results
async def test_result_delivered_with_exact_body_and_headers(
    cp: MockControlPlane, clock: VirtualClock, reporter_factory: Factory
) -> None:
    reporter = await reporter_factory()
    result = make_result()
    await reporter.submit_result(EID, "sess-1", result)
    await clock.run_until(delivered(reporter))
    [call] = cp.of("result")
    assert call.status == 201 and call.request.method == "POST"
    assert str(call.request.url) == f"{cp.url}/api/v1/internal/executions/{EID}/result"
    assert call.header("Authorization") == f"Bearer {TOKEN}"
    assert call.header("Idempotency-Key") == EID
    assert call.header("Content-Type") == "application/json"
    assert (call.header("User-Agent") or "").startswith("sandbox-executor/")
    body = call.json
    assert body == result_body(result)
    ResultBody.model_validate_json(call.body)
    assert body["artifacts"] == ["out/report.csv"] and body["metrics"]["duration_ms"] == 125.0
    assert "io_read_bytes" not in body["metrics"]  # no value: left out, never null
    assert body["termination_reason"] == "exited" and body["stdout_truncated"] is False
    await clock.run_until(lambda: not any(reporter.outbox.pending_dir.iterdir()))
    assert reporter.stats() == DeliveryStats(pending=0, undeliverable=0, delivered=1)
    assert clock.now == 0.0  # delivered at once: no backoff, no replay needed


async def test_no_authorization_header_without_token(
    cp: MockControlPlane, clock: VirtualClock, reporter_factory: Factory
) -> None:
    reporter = await reporter_factory(internal_api_token=None)
    await reporter.submit_result(EID, None, make_result())
    await clock.run_until(delivered(reporter))
    [call] = cp.of("result")
    assert call.header("Authorization") is None and call.header("Idempotency-Key") == EID


async def test_token_and_output_never_logged(
    cp: MockControlPlane,
    clock: VirtualClock,
    reporter_factory: Factory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cp.respond(500, kind="result", times=1)
    reporter = await reporter_factory()
    await reporter.submit_result(EID, None, make_result(stdout="very-private-output"))
    await clock.run_until(delivered(reporter))
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "result_delivered" in text and "callback_failed" in text  # logs were captured
    assert TOKEN not in text and "very-private-output" not in text


async def test_custom_callback_prefix(
    cp: MockControlPlane, clock: VirtualClock, reporter_factory: Factory
) -> None:
    cp.prefix = "/cp/internal"
    reporter = await reporter_factory(cp.url + "/", callback_prefix="cp/internal/")
    await reporter.submit_result(EID, None, make_result())
    await clock.run_until(delivered(reporter))
    assert cp.of("result")[0].request.url.path == f"/cp/internal/executions/{EID}/result"


@pytest.mark.parametrize("statuses", [[500], [503, 429], [502, 504, 500]])
async def test_transient_answers_are_retried_with_capped_backoff(
    cp: MockControlPlane, clock: VirtualClock, reporter_factory: Factory, statuses: list[int]
) -> None:
    for status in statuses:
        cp.respond(status, kind="result", times=1)
    reporter = await reporter_factory(outbox_replay_interval_seconds=3600)
    await reporter.submit_result(EID, None, make_result())
    await clock.run_until(delivered(reporter))
    calls = cp.of("result")
    assert [c.status for c in calls] == [*statuses, 201]
    assert len({c.body for c in calls}) == 1  # the same bytes every attempt
    backoffs = [b.at - a.at for a, b in itertools.pairwise(calls)]
    assert all(0 < gap <= BACKOFF_CAP + 1e-9 for gap in backoffs), backoffs


@pytest.mark.parametrize("error", [httpx.ConnectError, httpx.ReadTimeout, httpx.RemoteProtocolError])
async def test_connection_errors_are_retried_then_replayed(
    cp: MockControlPlane, clock: VirtualClock, reporter_factory: Factory, error: type[httpx.HTTPError]
) -> None:
    cp.fail(error, kind="result", times=6)  # 4 attempts, then two replays fail too
    reporter = await reporter_factory()
    await reporter.submit_result(EID, None, make_result())
    assert reporter.outbox.path(EID).exists()
    await clock.run_until(delivered(reporter))
    calls = cp.of("result")
    assert [c.status for c in calls] == [None] * 6 + [201]
    # Attempts 1-4 one backoff apart; the replayer starts the next round of attempts.
    assert calls[3].at <= 3 * BACKOFF_CAP + 1e-9
    assert calls[4].at >= 0.9 * REPLAY
    assert calls[6].at - calls[4].at <= 2 * BACKOFF_CAP + 1e-9
    await clock.run_until(lambda: not reporter.outbox.path(EID).exists())
    assert reporter.stats() == DeliveryStats(pending=0, undeliverable=0, delivered=1)


async def test_requests_carry_the_callback_timeout(
    cp: MockControlPlane, clock: VirtualClock, reporter_factory: Factory
) -> None:
    reporter = await reporter_factory(callback_timeout_seconds=7.5)
    await reporter.submit_result(EID, None, make_result())
    await clock.run_until(delivered(reporter))
    timeout = cp.of("result")[0].request.extensions["timeout"]
    assert timeout == {"connect": 7.5, "read": 7.5, "write": 7.5, "pool": 7.5}


@pytest.mark.parametrize("status", [422, 409, 400, 404])
async def test_permanent_answer_is_undeliverable_without_retry(
    cp: MockControlPlane, clock: VirtualClock, reporter_factory: Factory, status: int
) -> None:
    cp.respond(status, kind="result")
    before = metric("sandbox_results_undeliverable_total")
    reporter = await reporter_factory()
    await reporter.submit_result(EID, "sess-1", make_result())
    await clock.run_until(lambda: reporter.stats().undeliverable == 1)
    await clock.advance(10 * REPLAY)  # ten replay intervals: still a single attempt
    assert len(cp.of("result")) == 1
    assert reporter.stats() == DeliveryStats(pending=0, undeliverable=1, delivered=0)
    assert not reporter.outbox.path(EID).exists()
    head, _, body = reporter.outbox.undeliverable_path(EID).read_bytes().partition(b"\n")
    meta = json.loads(head)
    assert meta["undeliverable"]["status_code"] == status and meta["session_id"] == "sess-1"
    assert json.loads(body)["status"] == "success"  # the result itself is kept
    assert metric("sandbox_results_undeliverable_total") == before + 1
    # A new process does not replay it either.
    await reporter.aclose()
    again = await reporter_factory()
    await clock.advance(3 * REPLAY)
    assert len(cp.of("result")) == 1
    assert again.stats().undeliverable == 1


async def test_409_after_a_crashed_report_is_permanent(
    cp: MockControlPlane, clock: VirtualClock, reporter_factory: Factory
) -> None:
    reporter = await reporter_factory()
    crashed = ExecutionResult.crashed("aborted: shutting down", TerminationReason.SHUTDOWN)
    await reporter.submit_result(EID, None, crashed)
    await clock.run_until(delivered(reporter))
    # No rusage: the optional metrics are left out, so the strict model accepted it.
    assert cp.of("result")[0].status == 201
    assert cp.of("result")[0].json["metrics"] == {"duration_ms": 0.0}
    # Another process reports the same id (e.g. after a restart of the daemon).
    other = await reporter_factory(results_dir=reporter.settings.results_dir / "other")
    await other.submit_result(EID, None, make_result())
    await clock.run_until(lambda: other.stats().undeliverable == 1)
    assert [c.status for c in cp.of("result")] == [201, 409]


async def test_submit_is_idempotent_per_execution_id(
    cp: MockControlPlane, clock: VirtualClock, reporter_factory: Factory
) -> None:
    reporter = await reporter_factory()
    await asyncio.gather(
        reporter.submit_result(EID, None, make_result(stdout="first")),
        reporter.submit_result(EID, None, make_result(stdout="second")),
    )
    await clock.run_until(delivered(reporter))
    await reporter.submit_result(EID, None, make_result(stdout="third"))
    await clock.advance(3 * REPLAY)
    assert [c.json["stdout"] for c in cp.of("result")] == ["first"]


async def test_no_control_plane_url_sends_nothing_and_stores_nothing(
    cp: MockControlPlane, reporter_factory: Factory
) -> None:
    # Standalone: the service keeps results in memory for GET /executions/{id}; an outbox
    # that nothing will ever drain would only grow.
    reporter = await reporter_factory(None)
    await reporter.submit_result(EID, None, make_result())
    async with reporter.heartbeat(EID):
        await asyncio.sleep(0)
    reporter.announce_ready()
    await reporter.announce_exited(143, "sigterm")
    await reporter.flush(0.1)
    assert cp.calls == [] and not reporter.outbox.path(EID).exists()
    assert reporter.stats() == DeliveryStats(pending=0, undeliverable=0, delivered=0)


async def test_non_finite_numbers_never_sent(
    cp: MockControlPlane, clock: VirtualClock, reporter_factory: Factory
) -> None:
    result = make_result(
        execution_time=float("nan"),
        return_value={"x": [1.0, float("inf")]},
        metrics=Metrics(duration_ms=float("nan"), cpu_time_ms=float("-inf")),
    )
    body = result_body(result)
    assert body["execution_time"] == 0.0 and body["metrics"] == {"duration_ms": 0.0}
    assert body["return_value"] == {"x": [1.0, None]}
    reporter = await reporter_factory()
    await reporter.submit_result(EID, None, result)
    await clock.run_until(delivered(reporter))  # the mock answers 422 to NaN or null metrics
    assert b"NaN" not in cp.of("result")[0].body and b"Infinity" not in cp.of("result")[0].body


async def test_invalid_execution_id_rejected(reporter_factory: Factory) -> None:
    reporter = await reporter_factory()
    with pytest.raises(ValueError):
        await reporter.submit_result("../../etc/passwd", None, make_result())


# ---------------------------------------------------------------------- durability
async def test_result_is_on_disk_before_submit_returns(
    cp: MockControlPlane, reporter_factory: Factory
) -> None:
    cp.fail(httpx.ConnectError)
    reporter = await reporter_factory()
    await reporter.submit_result(EID, "sess-1", make_result())
    meta, _, body = reporter.outbox.path(EID).read_bytes().partition(b"\n")
    assert json.loads(meta)["execution_id"] == EID
    assert json.loads(body) == result_body(make_result())


async def test_results_survive_a_dropped_instance(
    cp: MockControlPlane, clock: VirtualClock, reporter_factory: Factory
) -> None:
    cp.fail(httpx.ConnectError)
    first = await reporter_factory()
    ids = [f"{EID}_{i}" for i in range(3)]
    for eid in ids:
        await first.submit_result(eid, None, make_result(stdout=eid))
    await first.aclose()  # no flush: as if the process died
    cp.clear()
    second = await reporter_factory()
    assert second.stats().pending == 3
    await clock.run_until(delivered(second, 3))
    got = {c.execution_id: c.json["stdout"] for c in cp.of("result") if c.status == 201}
    assert got == {eid: eid for eid in ids}
    await clock.run_until(lambda: second.stats() == DeliveryStats(pending=0, undeliverable=0, delivered=3))


async def test_replayer_delivers_after_the_retry_budget_is_spent(
    cp: MockControlPlane, clock: VirtualClock, reporter_factory: Factory
) -> None:
    cp.respond(503, kind="result", times=5)
    reporter = await reporter_factory(callback_max_attempts=2)
    await reporter.submit_result(EID, None, make_result())
    await clock.run_until(delivered(reporter))
    assert [c.status for c in cp.of("result")] == [503] * 5 + [201]
    # 2 attempts now, 2 at the first replay, 1 + success at the second.
    assert clock.now >= 2 * 0.9 * REPLAY


async def test_corrupt_outbox_file_is_set_aside(
    cp: MockControlPlane, clock: VirtualClock, tmp_path: Path, reporter_factory: Factory
) -> None:
    outbox = Outbox(tmp_path / "results")
    outbox.ensure_dirs()
    outbox.path(EID).write_bytes(b"{not json")
    (outbox.pending_dir / f".{EID}.json.1.tmp").write_bytes(b"half")
    reporter = await reporter_factory()
    await clock.run_until(lambda: reporter.stats().undeliverable == 1)
    assert not cp.of("result")
    assert outbox.undeliverable_path(EID).exists()
    assert not (outbox.pending_dir / f".{EID}.json.1.tmp").exists()


async def test_flush_cuts_the_backoff_short_and_respects_its_timeout(
    cp: MockControlPlane, clock: VirtualClock, reporter_factory: Factory
) -> None:
    cp.fail(httpx.ConnectError, kind="result", times=1)
    reporter = await reporter_factory(callback_max_backoff_seconds=60, outbox_replay_interval_seconds=3600)
    await reporter.submit_result(EID, None, make_result())
    await clock.settle()  # refused once; now in a backoff sleep of up to a minute
    assert len(cp.of("result")) == 1 and clock.sleeps
    started = time.monotonic()
    await reporter.flush(5.0)
    assert time.monotonic() - started < 1.0 and clock.now == 0.0
    assert reporter.stats().delivered == 1
    # With the control plane not answering, flush still returns on time.
    cp.hang(kind="result")
    await reporter.submit_result(EID + "_2", None, make_result())
    started = time.monotonic()
    await reporter.flush(0.1)
    assert 0.1 <= time.monotonic() - started < 0.5
    assert reporter.stats().pending == 1


async def test_callback_metrics_counted(
    cp: MockControlPlane, clock: VirtualClock, reporter_factory: Factory
) -> None:
    labels = {"kind": "result", "outcome": "success"}
    before_ok = metric("sandbox_callbacks_total", labels)
    before_tr = metric("sandbox_callbacks_total", {**labels, "outcome": "transient"})
    before_lat = metric("sandbox_result_delivery_latency_seconds_count")
    cp.respond(500, kind="result", times=1)
    reporter = await reporter_factory()
    await reporter.submit_result(EID, None, make_result())
    await clock.run_until(delivered(reporter))
    assert metric("sandbox_callbacks_total", labels) == before_ok + 1
    assert metric("sandbox_callbacks_total", {**labels, "outcome": "transient"}) == before_tr + 1
    assert metric("sandbox_result_delivery_latency_seconds_count") == before_lat + 1
    assert metric("sandbox_outbox_pending") == 0


# ---------------------------------------------------------------------- heartbeats
async def test_heartbeats_on_a_fixed_schedule_and_none_after_the_block(
    cp: MockControlPlane, clock: VirtualClock, reporter_factory: Factory
) -> None:
    reporter = await reporter_factory(heartbeat_interval_seconds=0.2)
    async with reporter.heartbeat(EID):
        await clock.advance(0.9)
    await clock.advance(1.0)
    beats = cp.of("heartbeat", EID)
    assert [round(b.at, 6) for b in beats] == [0.2, 0.4, 0.6, 0.8]
    assert all(b.status == 200 for b in beats)  # each body passed the strict model
    assert [b.json["progress"]["beat"] for b in beats] == [1, 2, 3, 4]
    assert beats[0].json["timestamp"].endswith("+00:00")
    assert beats[0].header("Authorization") == f"Bearer {TOKEN}"
    assert beats[0].request.extensions["timeout"]["read"] == 0.2  # never longer than a beat


async def test_a_slow_control_plane_does_not_shift_the_schedule(
    cp: MockControlPlane, clock: VirtualClock, reporter_factory: Factory
) -> None:
    answer_after = 0.15  # virtual seconds each heartbeat takes to be answered

    original = cp._handle

    async def slow(request: httpx.Request) -> httpx.Response:
        response = await original(request)
        clock.now += answer_after
        return response

    cp._handle = slow  # type: ignore[method-assign]
    reporter = await reporter_factory(heartbeat_interval_seconds=0.2)
    async with reporter.heartbeat(EID):
        await clock.advance(0.9)
    assert [round(b.at, 6) for b in cp.of("heartbeat")] == [0.2, 0.4, 0.6, 0.8]


async def test_failing_heartbeats_change_nothing(
    cp: MockControlPlane, clock: VirtualClock, reporter_factory: Factory
) -> None:
    cp.respond(500, kind="heartbeat", times=1)
    cp.fail(httpx.ReadTimeout, kind="heartbeat", times=1)
    cp.fail(httpx.ConnectError, kind="heartbeat", times=1)
    reporter = await reporter_factory(heartbeat_interval_seconds=0.15)
    async with reporter.heartbeat(EID):
        await clock.advance(0.7)
    assert [b.status for b in cp.of("heartbeat")] == [500, None, None, 200]


async def test_heartbeat_block_exit_cancels_a_hanging_beat(
    cp: MockControlPlane, clock: VirtualClock, reporter_factory: Factory
) -> None:
    cp.hang(kind="heartbeat")
    reporter = await reporter_factory(heartbeat_interval_seconds=0.1)
    block = reporter.heartbeat(EID)
    await block.__aenter__()
    await clock.run_until(lambda: len(cp.of("heartbeat")) == 1)
    await asyncio.wait_for(block.__aexit__(None, None, None), 1)  # does not wait for the answer
    await clock.advance(1.0)
    assert len(cp.of("heartbeat")) == 1


# ---------------------------------------------------------------------- lifecycle
async def test_ready_retried_while_refused_then_acknowledged_once(
    cp: MockControlPlane, clock: VirtualClock, reporter_factory: Factory
) -> None:
    cp.fail(httpx.ConnectError, kind="ready", times=3)
    reporter = await reporter_factory()
    reporter.announce_ready()
    reporter.announce_ready()  # a second call is a no-op
    await clock.run_until(lambda: any(c.status == 200 for c in cp.of("ready")))
    await clock.advance(10.0)
    calls = cp.of("ready")
    assert [c.status for c in calls] == [None, None, None, 200]
    body = calls[-1].json
    assert body["container_id"] == POD and body["pod_name"] == POD
    assert body["executor_port"] == 8080 and body["ready_at"].endswith("+00:00")
    assert calls[-1].header("Authorization") == f"Bearer {TOKEN}"


async def test_ready_retried_on_5xx_and_4xx(
    cp: MockControlPlane, clock: VirtualClock, reporter_factory: Factory
) -> None:
    cp.respond(503, kind="ready", times=1)
    cp.respond(404, kind="ready", times=1)
    reporter = await reporter_factory()
    reporter.announce_ready()
    await clock.run_until(lambda: any(c.status == 200 for c in cp.of("ready")))
    assert [c.status for c in cp.of("ready")] == [503, 404, 200]


async def test_identity_falls_back_to_the_hostname(
    cp: MockControlPlane, clock: VirtualClock, reporter_factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOSTNAME", "session-xyz-7f9c")
    monkeypatch.delenv("CONTAINER_ID", raising=False)
    monkeypatch.delenv("POD_NAME", raising=False)
    reporter = await reporter_factory(container_id=None, pod_name=None)
    reporter.announce_ready()
    await clock.run_until(lambda: bool(cp.of("ready")))
    await reporter.announce_exited(143, "sigterm")
    for call in (*cp.of("ready"), *cp.of("exited")):
        assert call.status == 200  # pod_name is a string, never null
        assert call.json["container_id"] == call.json["pod_name"] == "session-xyz-7f9c"


async def test_exited_body_sent_once(cp: MockControlPlane, reporter_factory: Factory) -> None:
    reporter = await reporter_factory()
    await reporter.announce_exited(143, "sigterm")
    await reporter.announce_exited(143, "sigterm")  # once only
    [exited] = cp.of("exited")
    assert exited.status == 200
    body = exited.json
    assert body["container_id"] == POD and body["pod_name"] == POD
    assert body["exit_code"] == 143 and body["exit_reason"] == "sigterm"


async def test_exited_is_short_and_never_raises(cp: MockControlPlane, reporter_factory: Factory) -> None:
    reporter = await reporter_factory(callback_timeout_seconds=10)
    await reporter.announce_exited(143, "sigterm")
    assert cp.of("exited")[0].request.extensions["timeout"]["read"] == 0.5
    # Not answered at all: the guard around the request ends it just after its timeout.
    cp.hang(kind="exited")
    hung = await reporter_factory(callback_timeout_seconds=0.05, results_dir=reporter.settings.results_dir)
    started = time.monotonic()
    await hung.announce_exited(143, "sigterm")
    assert time.monotonic() - started < 0.5
    cp.release()
    cp.fail(httpx.ConnectError, kind="exited")
    refused = await reporter_factory(results_dir=reporter.settings.results_dir)
    await refused.announce_exited(130, "sigint")  # refused: no exception
    assert len(cp.of("exited")) == 3


async def test_exited_stops_ready_retries(
    cp: MockControlPlane, clock: VirtualClock, reporter_factory: Factory
) -> None:
    cp.respond(503, kind="ready")
    reporter = await reporter_factory()
    reporter.announce_ready()
    await clock.run_until(lambda: len(cp.of("ready")) >= 2)
    await reporter.announce_exited(0, "exit")
    count = len(cp.of("ready"))
    await clock.advance(60.0)
    assert len(cp.of("ready")) == count
