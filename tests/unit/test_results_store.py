"""Standalone results on disk: saved durably, found again, bounded like the history."""

from __future__ import annotations

import os
import time
from pathlib import Path

from sandbox_executor.models import ExecutionResult, Status, TerminationReason
from sandbox_executor.results_store import ResultStore


def _result(value: int) -> ExecutionResult:
    return ExecutionResult(
        status=Status.SUCCESS, exit_code=0, execution_time=0.1, termination_reason=TerminationReason.EXITED,
        return_value=value,
    )  # fmt: skip


def test_a_saved_result_is_found_again_by_a_new_store(tmp_path: Path) -> None:
    assert ResultStore(tmp_path, retention_seconds=60, retention_count=10).save("e1", _result(1))
    again = ResultStore(tmp_path, retention_seconds=60, retention_count=10)
    assert again.load("e1") == _result(1)
    assert again.load("e2") is None
    again.forget("e1")
    assert again.load("e1") is None


def test_ids_that_are_not_file_names_are_never_used(tmp_path: Path) -> None:
    store = ResultStore(tmp_path, retention_seconds=60, retention_count=10)
    assert not store.save("../escape", _result(1))
    assert store.load("../escape") is None and not (tmp_path / "escape.json").exists()


def test_prune_keeps_the_newest_within_the_horizon(tmp_path: Path) -> None:
    store = ResultStore(tmp_path, retention_seconds=3600, retention_count=2)
    now = time.time()
    for n, age in enumerate([7200, 30, 20, 10]):  # e0 is past the horizon, e1 past the count
        store.save(f"e{n}", _result(n))
        os.utime(store.directory / f"e{n}.json", (now - age, now - age))
    (store.directory / ".e9.json.1234.tmp").write_bytes(b"{")  # an interrupted write
    assert store.prune() == 3
    assert sorted(p.name for p in store.directory.iterdir()) == ["e2.json", "e3.json"]
