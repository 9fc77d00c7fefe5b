"""The execution queue and lifecycle around the engine: accept, queue, run, record, report.

Accepted executions are never dropped: they run, or at shutdown they are recorded (and
reported) as ``crashed`` with termination_reason ``shutdown``. With a journal, every
acceptance is durable before the 200, so that one the daemon was killed during is
reported ``crashed`` (``restarted``) by the next start (:meth:`ExecutionService.restore`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import stat
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import structlog

from . import metrics
from .config import Settings
from .errors import Conflict, QueueFull, ShuttingDown
from .models import ExecuteRequest, ExecutionResult, TerminationReason
from .service_ports import (
    Acceptances,
    Dependencies,
    Executor,
    GuardsView,
    PoolView,
    Reporter,
    StoredResults,
)
from .streaming import EventLogs

if TYPE_CHECKING:
    from .journal import StorageStatus
    from .journal_records import Accepted

log = structlog.get_logger(__name__)

State = Literal["queued", "running", "completed"]

RESTARTED_MESSAGE = "The executor restarted during the execution; its outcome is unknown."


@dataclass
class ExecutionRecord:
    """One accepted execution and, once it ends, its result."""

    request: ExecuteRequest
    # None: restored after a restart, without its payload; any replay of the id matches.
    fingerprint: str | None
    accepted_at: float = field(default_factory=time.monotonic)
    state: State = "queued"
    started_at: float | None = None
    finished_at: float | None = None
    result: ExecutionResult | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    # False for runs the control plane did not ask for (MCP): no heartbeat, no callback.
    report: bool = True

    @property
    def execution_id(self) -> str:
        return self.request.execution_id

    def public_status(self) -> str:
        if self.result is not None:
            return str(self.result.status)
        return self.state

    def view(self) -> dict[str, Any]:
        """Body of GET /executions/{id}: the state, or the final result."""
        if self.result is None:
            return {"execution_id": self.execution_id, "status": self.state}
        return {"execution_id": self.execution_id, **self.result.model_dump(mode="json")}


class ExecutionService:
    """Bounded queue + worker slots + bounded history of executions."""

    def __init__(
        self,
        settings: Settings,
        engine: Executor,
        reporter: Reporter | None = None,
        *,
        pool: PoolView | None = None,
        dependencies: Dependencies | None = None,
        journal: Acceptances | None = None,
        guards: GuardsView | None = None,
        results: StoredResults | None = None,
    ) -> None:
        """``results``: where final results are committed when no control plane takes
        them, so that GET and a replayed POST answer after a restart."""
        self.settings = settings
        self.engine = engine
        self.reporter = reporter
        self.pool = pool
        self.dependencies = dependencies
        self.journal = journal
        self.guards = guards
        self.results = results
        self.records: OrderedDict[str, ExecutionRecord] = OrderedDict()
        # Live output of every kept execution (GET /executions/{id}/events), pruned with it.
        self.event_logs = EventLogs(settings.max_output_bytes)
        self._queue: asyncio.Queue[ExecutionRecord] = asyncio.Queue()
        self._workers: list[asyncio.Task[None]] = []
        self.shutting_down = False
        self.started_at = time.monotonic()
        self._finishing: set[asyncio.Future[None]] = set()

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        for n in range(self.settings.max_concurrent_executions):
            self._workers.append(asyncio.create_task(self._worker(), name=f"execution-worker-{n}"))

    async def abort_all(
        self, reason: TerminationReason = TerminationReason.SHUTDOWN
    ) -> list[ExecutionRecord]:
        """Stop accepting, kill running sandboxes, and record every unfinished execution.

        Returns the records whose (crashed) results were produced here.
        """
        self.shutting_down = True
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers.clear()
        # Results recorded just before the cancel must still reach the outbox.
        await asyncio.gather(*self._finishing, return_exceptions=True)
        aborted: list[ExecutionRecord] = []
        for record in list(self.records.values()):
            if record.result is None:
                elapsed = time.monotonic() - record.started_at if record.started_at else 0.0
                message = "Execution aborted: the executor is shutting down"
                await self._finish(record, ExecutionResult.crashed(message, reason, elapsed))
                aborted.append(record)
        return aborted

    # ------------------------------------------------------------------ accept
    def submit(self, request: ExecuteRequest, *, report: bool = True) -> tuple[ExecutionRecord, bool]:
        """Accept ``request`` (or find its earlier acceptance). Returns (record, created).

        ``report=False``: the result is recorded but never sent to the control plane (runs
        it did not ask for, whose ids it would not know)."""
        if self.shutting_down:
            metrics.REJECTED.labels("shutting_down").inc()
            raise ShuttingDown("The executor is shutting down.", retry_after=5)
        fingerprint = request.fingerprint()
        existing = self.get(request.execution_id)
        if existing is not None:
            if existing.fingerprint in (fingerprint, None):
                return existing, False
            metrics.REJECTED.labels("conflict").inc()
            raise Conflict(f"Execution {request.execution_id} already exists with a different payload.")
        if self._queue.qsize() >= self.settings.max_queued_executions:
            metrics.REJECTED.labels("queue_full").inc()
            limit = self.settings.max_queued_executions
            raise QueueFull(f"The queue is full ({limit} waiting).", retry_after=1)
        if self.journal is not None and report:
            # Durable before the 200 (StorageUnavailable otherwise): if the daemon dies from
            # here on, the next start reports the execution crashed. (A run the control plane
            # did not ask for is answered by its own call, never acknowledged before.)
            self.journal.accept(request.execution_id, request.session_id, request.language, request.timeout)
        record = ExecutionRecord(request=request, fingerprint=fingerprint, report=report)
        self._prune()
        self.records[request.execution_id] = record
        self.event_logs.open(request.execution_id)
        self._queue.put_nowait(record)
        metrics.QUEUE_DEPTH.set(self._queue.qsize())
        log.info(
            "execution_accepted",
            execution_id=request.execution_id,
            session_id=request.session_id,
            language=request.language,
            code_bytes=len(request.code),
        )
        return record, True

    def _prune(self) -> None:
        # Finished executions are kept for a bounded time and count; unfinished never pruned.
        now = time.monotonic()
        horizon = self.settings.executions_retention_seconds
        limit = self.settings.executions_retention_count
        for key, record in list(self.records.items()):
            too_many = len(self.records) >= limit
            expired = record.finished_at is not None and now - record.finished_at > horizon
            if record.result is not None and (too_many or expired):
                del self.records[key]
                self.event_logs.discard(key)
                if self.results is not None:
                    self.results.forget(key)
            elif not too_many:
                break

    def get(self, execution_id: str) -> ExecutionRecord | None:
        """The execution, from memory or, after a restart, from the result store."""
        record = self.records.get(execution_id)
        if record is None and self.results is not None:
            stored = self.results.load(execution_id)
            if stored is not None:
                record = self._recorded(ExecuteRequest.model_construct(execution_id=execution_id), stored)
        return record

    def _recorded(self, request: ExecuteRequest, result: ExecutionResult) -> ExecutionRecord:
        """A finished execution known without its payload (any replay of the id matches)."""
        record = ExecutionRecord(request=request, fingerprint=None, state="completed", result=result)
        record.finished_at = time.monotonic()
        record.done.set()
        self.records[request.execution_id] = record
        return record

    async def restore(self, accepted: Accepted, stored: ExecutionResult | None) -> ExecutionRecord:
        """An execution a previous daemon accepted and never finished: recorded again (for
        GET and a replayed POST) with ``stored``, the result it had already committed, or
        reported ``crashed`` through the outbox like any result."""
        request = ExecuteRequest.model_construct(
            execution_id=accepted.execution_id,
            session_id=accepted.session_id,
            code="",
            language=accepted.language,
            timeout=accepted.timeout,
        )
        if stored is not None:
            record = self._recorded(request, stored)
            if self.journal is not None:
                self.journal.complete(accepted.execution_id)
            return record
        record = ExecutionRecord(request=request, fingerprint=None)
        self.records[accepted.execution_id] = record
        crashed = ExecutionResult.crashed(RESTARTED_MESSAGE, TerminationReason.RESTARTED)
        await self._finish(record, crashed)
        return record

    # ------------------------------------------------------------------ run
    async def _worker(self) -> None:
        while True:
            record = await self._queue.get()
            metrics.QUEUE_DEPTH.set(self._queue.qsize())
            if record.result is not None:
                continue
            await self._run(record)

    async def _run(self, record: ExecutionRecord) -> None:
        request = record.request
        record.state = "running"
        record.started_at = time.monotonic()
        output = self.event_logs.open(request.execution_id)
        output.status("running")
        metrics.QUEUE_WAIT.observe(record.started_at - record.accepted_at)
        metrics.ACTIVE.inc()
        bound = structlog.contextvars.bound_contextvars(
            execution_id=request.execution_id, session_id=request.session_id
        )
        try:
            with bound:
                log.info("execution_started", language=request.language)
                heartbeat = (
                    self.reporter.heartbeat(request.execution_id)
                    if self.reporter is not None and record.report
                    else contextlib.nullcontext()
                )
                async with heartbeat:
                    result = await self.engine.execute(request, output)
                await self._finish_shielded(record, result)
        except asyncio.CancelledError:
            # Shutdown: abort_all() records the crashed result after the workers stop.
            raise
        except Exception as exc:
            log.exception("execution_internal_error")
            message = f"internal executor error: {type(exc).__name__}"
            crashed = ExecutionResult.crashed(message, TerminationReason.SANDBOX_ERROR)
            await self._finish_shielded(record, crashed)
        finally:
            metrics.ACTIVE.dec()

    async def _finish_shielded(self, record: ExecutionRecord, result: ExecutionResult) -> None:
        # A shutdown cancel must not interrupt the durable commit of a finished result.
        future = asyncio.ensure_future(self._finish(record, result))
        self._finishing.add(future)
        future.add_done_callback(self._finishing.discard)
        await asyncio.shield(future)

    async def _finish(self, record: ExecutionRecord, result: ExecutionResult) -> None:
        if record.result is not None:
            return
        record.result = result
        record.state = "completed"
        record.finished_at = time.monotonic()
        request = record.request
        # Streams end with the result now, never waiting on the control plane.
        self.event_logs.open(request.execution_id).finish(result)
        metrics.EXECUTIONS.labels(request.language, str(result.status)).inc()
        metrics.EXECUTION_DURATION.labels(request.language).observe(result.execution_time)
        log.info(
            "execution_finished",
            execution_id=request.execution_id,
            session_id=request.session_id,
            status=str(result.status),
            termination_reason=str(result.termination_reason),
            exit_code=result.exit_code,
            duration_ms=result.metrics.duration_ms if result.metrics else None,
            stdout_bytes=len(result.stdout),
            stderr_bytes=len(result.stderr),
        )
        try:
            committed = True
            if self.reporter is not None and record.report:
                committed = await self.reporter.submit_result(
                    request.execution_id, request.session_id, result
                )
            if self.results is not None:
                saved = await asyncio.to_thread(self.results.save, request.execution_id, result)
                committed = committed and saved
            if committed and self.journal is not None:
                # Held in memory only (the outbox failed): left open, so a restart says crashed.
                self.journal.complete(request.execution_id)
        finally:
            record.done.set()

    # ------------------------------------------------------------------ health
    @property
    def queued(self) -> int:
        return self._queue.qsize()

    @property
    def active(self) -> int:
        return sum(1 for r in self.records.values() if r.state == "running")

    def storage_problem(self) -> StorageStatus | None:
        """Why acceptances cannot be made durable now (checked afresh), or None."""
        if self.journal is None:
            return None
        status = self.journal.probe()
        return None if status.available else status

    def health_problem(self) -> str | None:
        """A reason the daemon cannot serve executions, from cheap checks only."""
        if self.engine.isolation.startswith("bwrap") and shutil.which(self.settings.bwrap_path) is None:
            return "bwrap is no longer installed"
        workspace = self.settings.workspace_dir
        try:
            st = os.stat(workspace)
        except OSError as exc:
            return f"workspace {workspace} is unavailable: {exc.strerror}"
        if not stat.S_ISDIR(st.st_mode):
            return f"workspace {workspace} is not a directory"
        uid, gid = self.settings.sandbox_ids()
        writable = (
            (st.st_uid == uid and st.st_mode & stat.S_IWUSR)
            or (st.st_gid == gid and st.st_mode & stat.S_IWGRP)
            or st.st_mode & stat.S_IWOTH
        )
        if not writable:
            return f"workspace {workspace} is not writable by the sandbox user (uid {uid})"
        storage = self.storage_problem()
        if storage is not None:
            return f"results cannot be stored ({storage.reason}): {storage.detail}; executions are refused"
        if self.engine.last_start_error is not None:
            return f"sandboxes cannot start: {self.engine.last_start_error[:300]}"
        return None
