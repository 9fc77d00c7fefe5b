"""Stand-ins for the service's collaborators, where the real ones would only add waiting."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from sandbox_executor.control_plane import DeliveryStats
from sandbox_executor.models import ExecuteRequest, ExecutionResult, Status, TerminationReason
from sandbox_executor.streaming import OutputSink


class ScriptedEngine:
    """Runs nothing: each request waits for its gate, then returns a success (or raises)."""

    def __init__(self) -> None:
        self.last_start_error: str | None = None
        self.isolation = "bwrap"
        self.gates: dict[str, asyncio.Event] = {}
        self.started: list[str] = []
        self.explode: set[str] = set()

    def gate(self, execution_id: str) -> asyncio.Event:
        return self.gates.setdefault(execution_id, asyncio.Event())

    async def execute(self, request: ExecuteRequest, output: OutputSink | None = None) -> ExecutionResult:
        """Writes the request's stdin to ``output`` as stdout before waiting for its gate."""
        self.started.append(request.execution_id)
        if output is not None and request.stdin:
            output.write("stdout", request.stdin.encode())
        await self.gate(request.execution_id).wait()
        if request.execution_id in self.explode:
            raise RuntimeError("engine bug")
        return ExecutionResult(
            status=Status.SUCCESS,
            exit_code=0,
            execution_time=0.01,
            termination_reason=TerminationReason.EXITED,
            return_value=request.code,
            stdout=request.stdin or "",
        )


class RecordingReporter:
    def __init__(self) -> None:
        self.results: list[tuple[str, str | None, ExecutionResult]] = []
        self.beating: list[str] = []

    async def submit_result(self, execution_id: str, session_id: str | None, result: ExecutionResult) -> bool:
        self.results.append((execution_id, session_id, result))
        return True

    @contextlib.asynccontextmanager
    async def heartbeat(self, execution_id: str) -> AsyncIterator[None]:
        self.beating.append(execution_id)
        yield

    def stats(self) -> DeliveryStats:
        return DeliveryStats(pending=0, undeliverable=0, delivered=len(self.results))
