"""The execution service with a scripted engine: acceptance, queueing, lifecycle, reports."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from sandbox_executor.config import Settings
from sandbox_executor.errors import Conflict, QueueFull, ShuttingDown
from sandbox_executor.models import ExecuteRequest, Status, TerminationReason
from sandbox_executor.service import ExecutionService
from tests.support.fakes import RecordingReporter, ScriptedEngine


@pytest.fixture
def engine() -> ScriptedEngine:
    return ScriptedEngine()


@pytest.fixture
def reporter() -> RecordingReporter:
    return RecordingReporter()


@pytest.fixture
async def service(
    make_settings: Callable[..., Settings], engine: ScriptedEngine, reporter: RecordingReporter
) -> AsyncIterator[ExecutionService]:
    made = ExecutionService(make_settings(max_queued_executions=2), engine, reporter)
    await made.start()
    yield made
    for gate in engine.gates.values():
        gate.set()
    await made.abort_all()


def _request(execution_id: str, code: str = "x", **fields: Any) -> ExecuteRequest:
    return ExecuteRequest(execution_id=execution_id, code=code, language="python", **fields)


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_accepted_then_run_then_reported(
    service: ExecutionService, engine: ScriptedEngine, reporter: RecordingReporter
) -> None:
    record, created = service.submit(_request("e1", "code-1", session_id="s1"))
    assert created and record.public_status() == "queued"
    await _settle()
    assert record.state == "running" and service.active == 1 and reporter.beating == ["e1"]
    engine.gate("e1").set()
    await asyncio.wait_for(record.done.wait(), 2)
    assert record.public_status() == "success" and record.view()["return_value"] == "code-1"
    assert [(eid, sid) for eid, sid, _ in reporter.results] == [("e1", "s1")]


async def test_a_retry_finds_its_acceptance_and_a_different_payload_conflicts(
    service: ExecutionService,
) -> None:
    first, _ = service.submit(_request("e1"))
    again, created = service.submit(_request("e1"))
    assert again is first and not created
    with pytest.raises(Conflict) as caught:
        service.submit(_request("e1", "other code"))
    assert caught.value.error_code == "Executor.Conflict"


async def test_a_full_queue_refuses_with_a_retry_delay(service: ExecutionService) -> None:
    service.submit(_request("running"))
    await _settle()  # taken by the only worker
    service.submit(_request("q1"))
    service.submit(_request("q2"))
    with pytest.raises(QueueFull) as caught:
        service.submit(_request("q3"))
    assert caught.value.retry_after == 1 and service.queued == 2


async def test_shutdown_records_every_unfinished_execution_as_crashed(
    service: ExecutionService, reporter: RecordingReporter
) -> None:
    running, _ = service.submit(_request("running"))
    await _settle()
    queued, _ = service.submit(_request("queued"))
    aborted = await service.abort_all()
    assert {r.execution_id for r in aborted} == {"running", "queued"}
    for record in (running, queued):
        assert record.result is not None and record.result.status == Status.CRASHED
        assert record.result.termination_reason == TerminationReason.SHUTDOWN
    assert {eid for eid, _, _ in reporter.results} == {"running", "queued"}
    with pytest.raises(ShuttingDown) as caught:
        service.submit(_request("late"))
    assert caught.value.retry_after == 5


async def test_an_engine_fault_is_a_crashed_result_not_a_dead_worker(
    service: ExecutionService, engine: ScriptedEngine
) -> None:
    engine.explode.add("bad")
    engine.gate("bad").set()
    bad, _ = service.submit(_request("bad"))
    await asyncio.wait_for(bad.done.wait(), 2)
    assert bad.result is not None and bad.result.status == Status.CRASHED
    assert bad.result.error == "internal executor error: RuntimeError"
    engine.gate("good").set()
    good, _ = service.submit(_request("good"))
    await asyncio.wait_for(good.done.wait(), 2)
    assert good.public_status() == "success"


async def test_finished_executions_are_pruned_beyond_the_retention_count(
    make_settings: Callable[..., Settings], engine: ScriptedEngine
) -> None:
    service = ExecutionService(make_settings(executions_retention_count=2), engine)
    await service.start()
    for n in range(4):
        engine.gate(f"e{n}").set()
        record, _ = service.submit(_request(f"e{n}"))
        await asyncio.wait_for(record.done.wait(), 2)
    await service.abort_all()
    assert service.get("e0") is None and service.get("e3") is not None
    # Their live-output logs go with them; kept ones stay readable.
    assert service.event_logs.get("e0") is None and len(service.event_logs) == 2
    assert [e.kind for e in service.event_logs.get("e3").events_after(0)] == ["status", "status", "result"]  # type: ignore[union-attr]


async def test_each_execution_streams_queued_running_output_then_its_result(
    service: ExecutionService, engine: ScriptedEngine, reporter: RecordingReporter
) -> None:
    record, _ = service.submit(_request("e1", stdin="hello"))
    log = service.event_logs.get("e1")
    assert log is not None and [e.data for e in log.events_after(0)] == ['{"status":"queued"}']
    assert service.submit(_request("e1", stdin="hello"))[0] is record  # a replay: the same log
    await _settle()
    assert [e.kind for e in log.events_after(0)] == ["status", "status", "stdout"]
    engine.gate("e1").set()
    await asyncio.wait_for(record.done.wait(), 2)
    events = log.events_after(0)
    assert [e.kind for e in events] == ["status", "status", "stdout", "result"] and log.closed
    assert json.loads(events[-1].data) == {"execution_id": "e1", **record.view()}


async def test_an_unreported_run_is_recorded_and_streamed_but_never_sent(
    service: ExecutionService, engine: ScriptedEngine, reporter: RecordingReporter
) -> None:
    engine.gate("mcp_1").set()
    record, _ = service.submit(_request("mcp_1"), report=False)
    await asyncio.wait_for(record.done.wait(), 2)
    assert record.public_status() == "success" and service.get("mcp_1") is record
    assert reporter.results == [] and reporter.beating == []
    assert service.event_logs.get("mcp_1").closed  # type: ignore[union-attr]


async def test_executions_aborted_at_shutdown_end_their_streams(
    service: ExecutionService, engine: ScriptedEngine
) -> None:
    service.submit(_request("stuck"))
    await _settle()
    await service.abort_all()
    log = service.event_logs.get("stuck")
    assert log is not None and log.closed
    assert json.loads(log.events_after(0)[-1].data)["termination_reason"] == "shutdown"


async def test_health_names_a_missing_workspace_and_a_sandbox_that_cannot_start(
    make_settings: Callable[..., Settings], engine: ScriptedEngine, tmp_path: Any
) -> None:
    service = ExecutionService(make_settings(), engine)
    assert service.health_problem() is None
    engine.last_start_error = "bwrap: cannot mount proc"
    assert service.health_problem() == "sandboxes cannot start: bwrap: cannot mount proc"
    gone = ExecutionService(make_settings(workspace_path=str(tmp_path / "gone")), engine)
    assert "is unavailable" in (gone.health_problem() or "")
