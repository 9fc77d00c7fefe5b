"""What the execution service needs from its collaborators, each typed by the part it uses
(the daemon wires the real ones: engine, reporter, pool, dependency manager, journal, result
store, run guards)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from .models import ExecuteRequest, ExecutionResult

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    from .control_plane import DeliveryStats
    from .dependencies import SyncRequest
    from .isolation import Level
    from .journal import StorageStatus
    from .pool import PoolStats
    from .streaming import OutputSink


class Executor(Protocol):
    """Runs one request to its result (engine.Engine)."""

    last_start_error: str | None

    @property
    def isolation(self) -> Level:
        """The isolation level its sandboxes run at (isolation.py)."""
        ...

    async def execute(self, request: ExecuteRequest, output: OutputSink | None = None) -> ExecutionResult: ...


class Reporter(Protocol):
    """What the service needs from the control-plane reporter (control_plane.py)."""

    async def submit_result(
        self, execution_id: str, session_id: str | None, result: ExecutionResult
    ) -> bool: ...

    def heartbeat(self, execution_id: str) -> AbstractAsyncContextManager[None]: ...

    def stats(self) -> DeliveryStats: ...


class PoolView(Protocol):
    """The warm pool as /health and /metrics see it (pool.WarmPool)."""

    def stats(self) -> PoolStats: ...


class Dependencies(Protocol):
    """Installs the session's packages (dependencies.DependencyManager)."""

    async def sync(self, request: SyncRequest) -> dict[str, Any]: ...


class Acceptances(Protocol):
    """The acceptance journal (journal.Journal): durable acceptances and their completion."""

    def accept(self, execution_id: str, session_id: str | None, language: str, timeout: int) -> object: ...

    def complete(self, execution_id: str) -> None: ...

    def probe(self) -> StorageStatus: ...


class StoredResults(Protocol):
    """Final results kept on disk when nobody else keeps them (results_store.ResultStore)."""

    def save(self, execution_id: str, result: ExecutionResult) -> bool: ...

    def load(self, execution_id: str) -> ExecutionResult | None: ...

    def forget(self, execution_id: str) -> None: ...


class GuardsView(Protocol):
    """The run guards as /health shows them (run_guards.RunGuards)."""

    def describe(self) -> dict[str, Any]: ...
