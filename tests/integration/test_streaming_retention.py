"""Event logs live exactly as long as the service keeps the execution's record."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from sandbox_executor.config import Settings
from sandbox_executor.engine import Engine
from sandbox_executor.models import ExecuteRequest
from sandbox_executor.service import ExecutionService
from sandbox_executor.streaming import EventLogs


async def test_logs_are_released_when_their_records_are_pruned(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(executions_retention_count=2)
    engine = Engine(settings)
    service = ExecutionService(settings, engine)
    logs = EventLogs(settings.max_output_bytes)
    await service.start()
    try:
        opened = []
        for n in range(4):
            request = ExecuteRequest(
                execution_id=f"exec_ret_{n}", language="python", code=f"def handler(e):\n    print({n})\n"
            )
            # Where the service accepts an execution: open its log, then retain what it kept.
            record, _ = service.submit(request)
            log = logs.open(request.execution_id)
            logs.retain(service.records)
            opened.append(log)
            await asyncio.wait_for(record.done.wait(), 30)
            assert record.result is not None
            log.finish(record.result)
        assert sorted(service.records) == ["exec_ret_2", "exec_ret_3"]
        assert [log.released for log in opened] == [True, True, False, False]
        assert logs.get("exec_ret_0") is None and len(logs) == 2
        assert opened[0].events_after(0) == []
        assert [e.kind for e in opened[3].events_after(0)] == ["status", "result"]
    finally:
        await service.abort_all()
        await engine.aclose()
