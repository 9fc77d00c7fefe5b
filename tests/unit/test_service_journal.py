"""The service with a real acceptance journal (on a tmp dir) and a scripted engine: what is
journaled when, and what a restart finds."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from sandbox_executor.config import Settings
from sandbox_executor.errors import StorageUnavailable
from sandbox_executor.journal import Journal
from sandbox_executor.models import ExecuteRequest, ExecutionResult, Status, TerminationReason
from sandbox_executor.service import ExecutionService
from tests.support.fakes import RecordingReporter, ScriptedEngine


class VolatileReporter(RecordingReporter):
    """A reporter whose outbox write failed: the result lives in memory only."""

    async def submit_result(self, execution_id: str, session_id: str | None, result: ExecutionResult) -> bool:
        await super().submit_result(execution_id, session_id, result)
        return False


@pytest.fixture
def journal_dir(tmp_path: Path) -> Path:
    return tmp_path / "results"


@pytest.fixture
async def made(
    make_settings: Callable[..., Settings], journal_dir: Path
) -> AsyncIterator[Callable[..., ExecutionService]]:
    services: list[ExecutionService] = []
    journals: list[Journal] = []

    def make(
        reporter: RecordingReporter | None = None, engine: ScriptedEngine | None = None
    ) -> ExecutionService:
        journal = Journal.open(journal_dir)
        journals.append(journal)
        service = ExecutionService(
            make_settings(), engine or ScriptedEngine(), reporter or RecordingReporter(), journal=journal
        )
        services.append(service)
        return service

    yield make
    for service in services:
        for gate in getattr(service.engine, "gates", {}).values():
            gate.set()
        await service.abort_all()
    for journal in journals:
        journal.close()


def _request(execution_id: str, code: str = "x") -> ExecuteRequest:
    return ExecuteRequest(execution_id=execution_id, code=code, language="python", session_id="s1", timeout=7)


def _restart(journal_dir: Path, old: Journal) -> list[str]:
    old.close()
    reopened = Journal.open(journal_dir)
    try:
        return [acc.execution_id for acc in reopened.unfinished()]
    finally:
        reopened.close()


async def test_an_acceptance_is_journaled_before_submit_returns(
    made: Callable[..., ExecutionService], journal_dir: Path
) -> None:
    service = made()
    request = ExecuteRequest(
        execution_id="e1",
        code="print('the secret code')",
        language="python",
        env_vars={"T": "the-secret-env"},
    )
    service.submit(request)
    assert service.journal is not None
    # As a killed daemon's successor would find it: pending...
    assert _restart(journal_dir, service.journal) == ["e1"]  # type: ignore[arg-type]
    # ...and never the code or the environment.
    kept = (journal_dir / "journal" / "acceptances").read_bytes()
    assert b"e1" in kept and b"the secret" not in kept


async def test_a_committed_result_completes_it(
    made: Callable[..., ExecutionService], journal_dir: Path
) -> None:
    engine = ScriptedEngine()
    service = made(engine=engine)
    await service.start()
    record, _ = service.submit(_request("e1"))
    engine.gate("e1").set()
    await asyncio.wait_for(record.done.wait(), 2)
    assert _restart(journal_dir, service.journal) == []  # type: ignore[arg-type]


async def test_a_result_held_in_memory_only_stays_open(
    made: Callable[..., ExecutionService], journal_dir: Path
) -> None:
    engine = ScriptedEngine()
    service = made(reporter=VolatileReporter(), engine=engine)
    await service.start()
    record, _ = service.submit(_request("e1"))
    engine.gate("e1").set()
    await asyncio.wait_for(record.done.wait(), 2)
    # Lost if the daemon dies before delivering it: the next start says crashed.
    assert _restart(journal_dir, service.journal) == ["e1"]  # type: ignore[arg-type]


async def test_a_refused_acceptance_leaves_nothing_behind(made: Callable[..., ExecutionService]) -> None:
    service = made()
    # Storage trouble (the real thing is in the integration tests): nothing recorded or queued.
    service.journal = _Refusing()
    with pytest.raises(StorageUnavailable):
        service.submit(_request("e1"))
    assert service.get("e1") is None and service.queued == 0


class _Refusing:
    def accept(self, *args: object) -> object:
        raise StorageUnavailable("results cannot be stored durably now", {"reason": "full"})

    def complete(self, execution_id: str) -> None:
        raise AssertionError("nothing was accepted")

    def probe(self) -> object:
        raise AssertionError("not asked")


async def test_restore_reports_crashed_and_answers_any_replay(
    made: Callable[..., ExecutionService], journal_dir: Path
) -> None:
    first = made()
    first.submit(_request("e1", code="the original"))
    assert first.journal is not None
    first.journal.close()

    reporter = RecordingReporter()
    second = made(reporter=reporter)
    assert second.journal is not None
    [accepted] = second.journal.unfinished()  # type: ignore[attr-defined]
    record = await second.restore(accepted, None)
    assert record.result is not None and record.result.status == Status.CRASHED
    assert record.result.termination_reason == TerminationReason.RESTARTED
    assert record.result.exit_code == -1 and "restarted" in (record.result.error or "")
    assert [eid for eid, sid, _ in reporter.results] == ["e1"] and reporter.results[0][1] == "s1"
    # The control plane's retry carries the original payload, which the journal never kept.
    again, created = second.submit(_request("e1", code="the original"))
    assert again is record and not created and again.public_status() == "crashed"
    assert _restart(journal_dir, second.journal) == []  # type: ignore[arg-type]


async def test_restore_keeps_a_result_that_reached_the_outbox(
    made: Callable[..., ExecutionService], journal_dir: Path
) -> None:
    first = made()
    first.submit(_request("e1"))
    first.journal.close()  # type: ignore[union-attr]
    reporter = RecordingReporter()
    second = made(reporter=reporter)
    [accepted] = second.journal.unfinished()  # type: ignore[union-attr]
    stored = ExecutionResult(status=Status.SUCCESS, exit_code=0, execution_time=0.1,
                             termination_reason=TerminationReason.EXITED, return_value=3)  # fmt: skip
    record = await second.restore(accepted, stored)
    assert record.result == stored and record.done.is_set()
    assert reporter.results == []  # already in the outbox: delivered from there
    assert _restart(journal_dir, second.journal) == []  # type: ignore[arg-type]
