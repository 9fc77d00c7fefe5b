"""ControlPlaneReporter against a real HTTP fake control plane on loopback.

Intervals and backoff are shrunk through settings so every scenario takes well under 2 s.
The fake control plane runs in threads, so its blocking waits are called via to_thread.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox_executor.config import Settings
from sandbox_executor.control_plane import (
    CALLBACKS,
    UNDELIVERABLE,
    ControlPlaneReporter,
    Outbox,
    result_body,
)
from sandbox_executor.metrics import REGISTRY
from sandbox_executor.models import ArtifactDetail, ExecutionResult, Metrics
from tests.support.fake_control_plane import FakeControlPlane, RecordedRequest

EID = "exec_20260101120000_0123abcd"
TOKEN = "s3cr3t-token-value"


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


@pytest.fixture
def cp() -> Iterator[FakeControlPlane]:
    with FakeControlPlane() as fake:
        yield fake


def fast_settings(results_dir: Path, url: str | None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "results_dir": results_dir,
        "control_plane_url": url,
        "internal_api_token": TOKEN,
        "callback_timeout_seconds": 0.5,
        "callback_max_attempts": 4,
        "callback_max_backoff_seconds": 0.05,
        "outbox_replay_interval_seconds": 0.3,
        "heartbeat_interval": 0.2,
        "container_id": "session-abc-pod",
        "pod_name": "session-abc-pod",
        "executor_port": 8080,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
async def reporter_factory(tmp_path: Path) -> AsyncIterator[Any]:
    made: list[ControlPlaneReporter] = []

    async def factory(url: str | None, **overrides: Any) -> ControlPlaneReporter:
        results_dir = overrides.pop("results_dir", tmp_path / "results")
        reporter = ControlPlaneReporter(fast_settings(results_dir, url, **overrides))
        await reporter.start()
        made.append(reporter)
        return reporter

    yield factory
    for reporter in made:
        await reporter.aclose()


async def wait_for(cp: FakeControlPlane, kind: str, count: int = 1, **kwargs: Any) -> list[RecordedRequest]:
    return await asyncio.to_thread(cp.wait_for, kind, count, **kwargs)


async def eventually(predicate: Any, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def metric(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


# ---------------------------------------------------------------------- results
async def test_result_delivered_with_exact_body_and_headers(
    cp: FakeControlPlane, reporter_factory: Any
) -> None:
    reporter = await reporter_factory(cp.url)
    result = make_result()
    await reporter.submit_result(EID, "sess-1", result)
    [request] = await wait_for(cp, "result", status=201)
    assert request.method == "POST"
    assert request.path == f"/api/v1/internal/executions/{EID}/result"
    assert request.header("Authorization") == f"Bearer {TOKEN}"
    assert request.header("Idempotency-Key") == EID
    assert request.header("Content-Type") == "application/json"
    body = request.json
    assert body == result_body(result)
    assert "io_read_bytes" not in body["metrics"]  # no value: left out, never null
    assert body["status"] == "success" and body["exit_code"] == 0
    assert body["artifacts"] == ["out/report.csv"]
    assert body["metrics"]["duration_ms"] == 125.0
    assert body["termination_reason"] == "exited"
    assert body["artifact_details"][0]["path"] == "out/report.csv"
    assert body["stdout_truncated"] is False
    await eventually(lambda: reporter.stats()["pending"] == 0)
    await eventually(lambda: not any(reporter.outbox.pending_dir.iterdir()))
    assert reporter.stats() == {"pending": 0, "undeliverable": 0, "delivered": 1}


async def test_no_authorization_header_without_token(cp: FakeControlPlane, reporter_factory: Any) -> None:
    reporter = await reporter_factory(cp.url, internal_api_token=None)
    await reporter.submit_result(EID, None, make_result())
    [request] = await wait_for(cp, "result")
    assert request.header("Authorization") is None
    assert request.header("Idempotency-Key") == EID


async def test_token_never_logged(
    cp: FakeControlPlane, reporter_factory: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    cp.respond(500, kind="result", times=1)
    reporter = await reporter_factory(cp.url)
    await reporter.submit_result(EID, None, make_result(stdout="very-private-output"))
    await wait_for(cp, "result", status=201)
    await eventually(lambda: reporter.stats()["delivered"] == 1)
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "result_delivered" in text  # the logs were captured at all
    assert TOKEN not in text
    assert "very-private-output" not in text


async def test_custom_callback_prefix(cp: FakeControlPlane, reporter_factory: Any) -> None:
    cp.prefix = "/cp/internal"
    reporter = await reporter_factory(cp.url + "/", callback_prefix="cp/internal/")
    await reporter.submit_result(EID, None, make_result())
    [request] = await wait_for(cp, "result", status=201)
    assert request.path == f"/cp/internal/executions/{EID}/result"


async def test_500_then_success(cp: FakeControlPlane, reporter_factory: Any) -> None:
    cp.respond(500, kind="result", times=1)
    reporter = await reporter_factory(cp.url)
    await reporter.submit_result(EID, None, make_result())
    requests = await wait_for(cp, "result", 2, status=None)
    await wait_for(cp, "result", status=201)
    assert [r.status for r in requests[:2]] == [500, 201]
    assert requests[0].body == requests[1].body  # the same bytes every attempt
    await eventually(lambda: reporter.stats()["delivered"] == 1)


async def test_503_and_429_are_transient(cp: FakeControlPlane, reporter_factory: Any) -> None:
    cp.respond(503, kind="result", times=1)
    cp.respond(429, kind="result", times=1)
    reporter = await reporter_factory(cp.url)
    await reporter.submit_result(EID, None, make_result())
    await wait_for(cp, "result", status=201)
    assert [r.status for r in cp.requests("result")] == [503, 429, 201]
    await eventually(lambda: reporter.stats()["delivered"] == 1)


async def test_connection_refused_then_up_on_same_port(cp: FakeControlPlane, reporter_factory: Any) -> None:
    # Budget: 4 attempts 50 ms apart, then the replayer every 0.3 s.
    port = cp.port
    cp.stop()
    reporter = await reporter_factory(cp.url)
    await reporter.submit_result(EID, None, make_result())
    assert reporter.outbox.path(EID).exists()
    await asyncio.sleep(1.0)  # retry budget spent, the replayer tries too
    assert reporter.stats()["pending"] == 1
    cp.start()
    assert cp.port == port
    [request] = await wait_for(cp, "result", status=201, timeout=3)
    assert request.header("Idempotency-Key") == EID
    await eventually(lambda: reporter.stats() == {"pending": 0, "undeliverable": 0, "delivered": 1})
    assert not reporter.outbox.path(EID).exists()


async def test_hang_past_timeout_is_retried(cp: FakeControlPlane, reporter_factory: Any) -> None:
    cp.hang(5, kind="result", times=1)
    reporter = await reporter_factory(cp.url, callback_timeout_seconds=0.3)
    started = time.monotonic()
    await reporter.submit_result(EID, None, make_result())
    requests = await wait_for(cp, "result", 2, timeout=4)
    await wait_for(cp, "result", status=201)
    assert requests[1].arrived_monotonic - requests[0].arrived_monotonic >= 0.25
    assert time.monotonic() - started < 3
    await eventually(lambda: reporter.stats()["delivered"] == 1)


@pytest.mark.parametrize("status", [422, 409, 400, 404])
async def test_permanent_answer_is_undeliverable_without_retry(
    cp: FakeControlPlane, reporter_factory: Any, status: int
) -> None:
    cp.respond(status, kind="result")
    before = metric("sandbox_results_undeliverable_total")
    reporter = await reporter_factory(cp.url)
    await reporter.submit_result(EID, "sess-1", make_result())
    await wait_for(cp, "result")
    await eventually(lambda: reporter.stats()["undeliverable"] == 1)
    await asyncio.sleep(0.8)  # more than two replay intervals: still a single attempt
    assert len(cp.requests("result")) == 1
    assert reporter.stats() == {"pending": 0, "undeliverable": 1, "delivered": 0}
    assert not reporter.outbox.path(EID).exists()
    kept = reporter.outbox.undeliverable_path(EID).read_bytes()
    head, _, body = kept.partition(b"\n")
    meta = json.loads(head)
    assert meta["undeliverable"]["status_code"] == status
    assert meta["session_id"] == "sess-1"
    assert json.loads(body)["status"] == "success"  # the result itself is kept
    assert metric("sandbox_results_undeliverable_total") == before + 1
    assert UNDELIVERABLE is not None
    # A new process does not replay it either.
    await reporter.aclose()
    again = await reporter_factory(cp.url)
    await asyncio.sleep(0.4)
    assert len(cp.requests("result")) == 1
    assert again.stats()["undeliverable"] == 1


async def test_real_409_after_crashed_report(cp: FakeControlPlane, reporter_factory: Any) -> None:
    """The fake's own contract logic: crashed is not final, a later report gets 409."""
    reporter = await reporter_factory(cp.url)
    await reporter.submit_result(
        EID, None, make_result(status="crashed", exit_code=-1, termination_reason="shutdown")
    )
    await wait_for(cp, "result", status=201)
    # Another process reports the same id (e.g. after the restart of a daemon).
    other = await reporter_factory(cp.url, results_dir=reporter.settings.results_dir / "other")
    await other.submit_result(EID, None, make_result())
    await wait_for(cp, "result", 2)
    await eventually(lambda: other.stats()["undeliverable"] == 1)
    assert cp.requests("result")[1].status == 409


async def test_submit_is_idempotent_per_execution_id(cp: FakeControlPlane, reporter_factory: Any) -> None:
    reporter = await reporter_factory(cp.url)
    await asyncio.gather(
        reporter.submit_result(EID, None, make_result(stdout="first")),
        reporter.submit_result(EID, None, make_result(stdout="second")),
    )
    await wait_for(cp, "result", status=201)
    await eventually(lambda: reporter.stats()["delivered"] == 1)
    await reporter.submit_result(EID, None, make_result(stdout="third"))
    await asyncio.sleep(0.4)
    assert [r.json["stdout"] for r in cp.requests("result")] == ["first"]


async def test_no_control_plane_url_sends_nothing_and_stores_nothing(
    tmp_path: Path, reporter_factory: Any
) -> None:
    # Standalone: the service keeps results in memory for GET /executions/{id}; an outbox
    # that nothing will ever drain would only grow.
    reporter = await reporter_factory(None)
    await reporter.submit_result(EID, None, make_result())
    async with reporter.heartbeat(EID):
        await asyncio.sleep(0.05)
    reporter.announce_ready()
    await reporter.announce_exited(143, "sigterm")
    await reporter.flush(0.1)
    assert not reporter.outbox.path(EID).exists()
    assert reporter.stats() == {"pending": 0, "undeliverable": 0, "delivered": 0}


async def test_non_finite_numbers_never_sent(cp: FakeControlPlane, reporter_factory: Any) -> None:
    result = make_result(
        execution_time=float("nan"),
        return_value={"x": [1.0, float("inf")]},
        metrics=Metrics(duration_ms=float("nan"), cpu_time_ms=float("-inf")),
    )
    body = result_body(result)
    assert body["execution_time"] == 0.0 and body["metrics"]["duration_ms"] == 0.0
    assert "cpu_time_ms" not in body["metrics"] and body["return_value"] == {"x": [1.0, None]}
    reporter = await reporter_factory(cp.url)
    await reporter.submit_result(EID, None, result)
    [request] = await wait_for(cp, "result", status=201)  # the fake rejects NaN with 422
    assert b"NaN" not in request.body and b"Infinity" not in request.body


async def test_invalid_execution_id_rejected(reporter_factory: Any, cp: FakeControlPlane) -> None:
    reporter = await reporter_factory(cp.url)
    with pytest.raises(ValueError):
        await reporter.submit_result("../../etc/passwd", None, make_result())


# ---------------------------------------------------------------------- durability
async def test_result_is_on_disk_before_submit_returns(
    tmp_path: Path, reporter_factory: Any, cp: FakeControlPlane
) -> None:
    cp.stop()
    reporter = await reporter_factory(cp.url)
    await reporter.submit_result(EID, "sess-1", make_result())
    raw = reporter.outbox.path(EID).read_bytes()
    meta, _, body = raw.partition(b"\n")
    assert json.loads(meta)["execution_id"] == EID
    assert json.loads(body) == result_body(make_result())


async def test_results_survive_a_dropped_instance(cp: FakeControlPlane, reporter_factory: Any) -> None:
    cp.stop()
    first = await reporter_factory(cp.url)
    ids = [f"{EID}_{i}" for i in range(3)]
    for eid in ids:
        await first.submit_result(eid, None, make_result(stdout=eid))
    await first.aclose()  # no flush: as if the process died
    cp.start()
    second = await reporter_factory(cp.url)
    assert second.stats()["pending"] == 3
    requests = await wait_for(cp, "result", 3, status=201)
    assert sorted(r.execution_id for r in requests) == sorted(ids)
    assert {r.execution_id: r.json["stdout"] for r in requests} == {eid: eid for eid in ids}
    await eventually(lambda: second.stats() == {"pending": 0, "undeliverable": 0, "delivered": 3})


async def test_replayer_delivers_after_retry_budget_spent(
    cp: FakeControlPlane, reporter_factory: Any
) -> None:
    cp.respond(503, kind="result", times=5)
    reporter = await reporter_factory(cp.url, callback_max_attempts=2, outbox_replay_interval_seconds=0.2)
    await reporter.submit_result(EID, None, make_result())
    await wait_for(cp, "result", status=201, timeout=4)
    statuses = [r.status for r in cp.requests("result")]
    assert statuses == [503] * 5 + [201]
    await eventually(lambda: reporter.stats()["delivered"] == 1)


async def test_corrupt_outbox_file_is_set_aside(
    cp: FakeControlPlane, tmp_path: Path, reporter_factory: Any
) -> None:
    outbox = Outbox(tmp_path / "results")
    outbox.ensure_dirs()
    outbox.path(EID).write_bytes(b"{not json")
    (outbox.pending_dir / f".{EID}.json.1.tmp").write_bytes(b"half")
    reporter = await reporter_factory(cp.url)
    await eventually(lambda: reporter.stats()["undeliverable"] == 1)
    assert not cp.requests("result")
    assert outbox.undeliverable_path(EID).exists()
    assert not (outbox.pending_dir / f".{EID}.json.1.tmp").exists()


async def test_flush_delivers_pending_and_respects_timeout(
    cp: FakeControlPlane, reporter_factory: Any
) -> None:
    cp.stop()
    reporter = await reporter_factory(
        cp.url, callback_max_backoff_seconds=5.0, outbox_replay_interval_seconds=60
    )
    await reporter.submit_result(EID, None, make_result())
    await asyncio.sleep(0.1)  # first attempt refused; now in a long backoff sleep
    cp.start()
    started = time.monotonic()
    await reporter.flush(1.0)
    assert time.monotonic() - started < 0.9
    assert reporter.stats()["delivered"] == 1
    # With the control plane hanging, flush still returns on time.
    cp.hang(10, kind="result")
    await reporter.submit_result(EID + "_2", None, make_result())
    started = time.monotonic()
    await reporter.flush(0.3)
    assert 0.25 < time.monotonic() - started < 0.8
    assert reporter.stats()["pending"] == 1


async def test_callback_metrics_counted(cp: FakeControlPlane, reporter_factory: Any) -> None:
    before_ok = metric("sandbox_callbacks_total", {"kind": "result", "outcome": "success"})
    before_tr = metric("sandbox_callbacks_total", {"kind": "result", "outcome": "transient"})
    before_lat = metric("sandbox_result_delivery_latency_seconds_count")
    cp.respond(500, kind="result", times=1)
    reporter = await reporter_factory(cp.url)
    await reporter.submit_result(EID, None, make_result())
    await eventually(lambda: reporter.stats()["delivered"] == 1)
    assert metric("sandbox_callbacks_total", {"kind": "result", "outcome": "success"}) == before_ok + 1
    assert metric("sandbox_callbacks_total", {"kind": "result", "outcome": "transient"}) == before_tr + 1
    assert metric("sandbox_result_delivery_latency_seconds_count") == before_lat + 1
    assert metric("sandbox_outbox_pending") == 0
    assert CALLBACKS is not None


# ---------------------------------------------------------------------- heartbeats
async def test_heartbeats_every_interval_and_none_after_block(
    cp: FakeControlPlane, reporter_factory: Any
) -> None:
    reporter = await reporter_factory(cp.url, heartbeat_interval=0.2)
    started = time.monotonic()
    async with reporter.heartbeat(EID):
        await asyncio.sleep(0.9)
    ended = time.time()
    await reporter.submit_result(EID, None, make_result())
    [result] = await wait_for(cp, "result", status=201)
    await asyncio.sleep(0.5)
    beats = cp.requests("heartbeat", EID)
    assert len(beats) == 4  # at 0.2, 0.4, 0.6, 0.8 s
    first_offset = beats[0].arrived_monotonic - started
    assert 0.15 < first_offset < 0.4
    gaps = [b.arrived_monotonic - a.arrived_monotonic for a, b in itertools.pairwise(beats)]
    assert all(0.1 < gap < 0.32 for gap in gaps), gaps
    assert all(b.arrived_at <= ended for b in beats)
    assert all(b.arrived_at < result.arrived_at for b in beats)
    body = beats[0].json
    assert set(body) == {"timestamp", "progress"} and isinstance(body["progress"], dict)
    assert body["timestamp"].endswith("+00:00")
    assert beats[0].header("Authorization") == f"Bearer {TOKEN}"


async def test_failing_heartbeats_change_nothing(cp: FakeControlPlane, reporter_factory: Any) -> None:
    cp.respond(500, kind="heartbeat", times=1)
    cp.hang(3, kind="heartbeat", times=1)
    reporter = await reporter_factory(cp.url, heartbeat_interval=0.15, callback_timeout_seconds=0.5)
    async with reporter.heartbeat(EID):
        await asyncio.sleep(0.7)
    beats = cp.requests("heartbeat")
    assert len(beats) >= 3  # kept beating through a 500 and a hang
    cp.stop()
    started = time.monotonic()
    async with reporter.heartbeat(EID + "_2"):
        await asyncio.sleep(0.4)
    assert time.monotonic() - started < 0.6  # refused beats neither raise nor delay the exit


async def test_heartbeat_block_exit_cancels_hanging_beat(cp: FakeControlPlane, reporter_factory: Any) -> None:
    cp.hang(5, kind="heartbeat")
    reporter = await reporter_factory(cp.url, heartbeat_interval=0.1, callback_timeout_seconds=5)
    block = reporter.heartbeat(EID)
    await block.__aenter__()
    await wait_for(cp, "heartbeat")
    started = time.monotonic()
    await block.__aexit__(None, None, None)
    # Exiting the block did not wait for the hung request, and no beat follows.
    assert time.monotonic() - started < 0.3
    await asyncio.sleep(0.3)
    assert len(cp.requests("heartbeat")) == 1


# ---------------------------------------------------------------------- lifecycle
async def test_ready_retried_while_refused_then_acknowledged_once(
    cp: FakeControlPlane, reporter_factory: Any
) -> None:
    cp.stop()
    reporter = await reporter_factory(cp.url)
    reporter.announce_ready()
    reporter.announce_ready()  # a second call is a no-op
    await asyncio.sleep(0.4)
    cp.start()
    [ready] = await wait_for(cp, "ready", status=200)
    await asyncio.sleep(0.4)
    assert len(cp.requests("ready")) == 1
    body = ready.json
    assert body["container_id"] == "session-abc-pod"
    assert body["pod_name"] == "session-abc-pod"
    assert body["executor_port"] == 8080
    assert body["ready_at"].endswith("+00:00")
    assert ready.header("Authorization") == f"Bearer {TOKEN}"


async def test_ready_retried_on_5xx_and_4xx(cp: FakeControlPlane, reporter_factory: Any) -> None:
    cp.respond(503, kind="ready", times=1)
    cp.respond(404, kind="ready", times=1)
    reporter = await reporter_factory(cp.url)
    reporter.announce_ready()
    await wait_for(cp, "ready", status=200)
    await asyncio.sleep(0.3)
    assert [r.status for r in cp.requests("ready")] == [503, 404, 200]


async def test_container_id_falls_back_to_hostname(
    cp: FakeControlPlane, reporter_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOSTNAME", "session-xyz-7f9c")
    monkeypatch.delenv("CONTAINER_ID", raising=False)
    reporter = await reporter_factory(cp.url, container_id=None)
    reporter.announce_ready()
    [ready] = await wait_for(cp, "ready", status=200)
    assert ready.json["container_id"] == "session-xyz-7f9c"


async def test_exited_body(cp: FakeControlPlane, reporter_factory: Any) -> None:
    reporter = await reporter_factory(cp.url)
    await reporter.announce_exited(143, "sigterm")
    await reporter.announce_exited(143, "sigterm")  # once only
    [exited] = await wait_for(cp, "exited", status=200)
    await asyncio.sleep(0.1)
    assert len(cp.requests("exited")) == 1
    body = exited.json
    assert body["container_id"] == "session-abc-pod" and body["pod_name"] == "session-abc-pod"
    assert body["exit_code"] == 143 and body["exit_reason"] == "sigterm"
    assert isinstance(body["exited_at"], str)


async def test_exited_is_short_and_never_raises(cp: FakeControlPlane, reporter_factory: Any) -> None:
    cp.hang(5, kind="exited")
    reporter = await reporter_factory(cp.url, callback_timeout_seconds=10)
    started = time.monotonic()
    await reporter.announce_exited(143, "sigterm")
    assert time.monotonic() - started < 0.7
    cp.stop()
    again = await reporter_factory(cp.url)
    await again.announce_exited(130, "sigint")  # refused: no exception


async def test_exited_stops_ready_retries(cp: FakeControlPlane, reporter_factory: Any) -> None:
    cp.respond(503, kind="ready")
    reporter = await reporter_factory(cp.url)
    reporter.announce_ready()
    await wait_for(cp, "ready")
    await reporter.announce_exited(0, "exit")
    count = len(cp.requests("ready"))
    await asyncio.sleep(0.3)
    assert len(cp.requests("ready")) == count
