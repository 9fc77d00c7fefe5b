"""Final results kept on disk where no control plane takes them (standalone mode).

Without ``CONTROL_PLANE_URL`` the only reader of a result is whoever polls
``GET /executions/{id}`` or replays ``POST /execute``: the result is committed to
``RESULTS_DIR/results/<id>.json`` (write, fsync, rename, directory fsync) before its
acceptance is marked complete in the journal, so both still answer after the daemon
restarts, killed or not. The files are bounded like the in-memory history
(EXECUTIONS_RETENTION_SECONDS and _COUNT): forgotten with their record, and pruned at
start-up. With a control plane the outbox holds results until they are delivered instead.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import structlog

from .durable import TMP_SUFFIX, atomic_write
from .models import EXECUTION_ID_RE, ExecutionResult

log = structlog.get_logger(__name__)

RESULTS_DIRNAME = "results"
_SUFFIX = ".json"


class ResultStore:
    """One file per finished execution (thread-safe: one file per id, atomic renames)."""

    def __init__(self, results_dir: Path, *, retention_seconds: float, retention_count: int) -> None:
        self.directory = results_dir / RESULTS_DIRNAME
        self.retention_seconds = retention_seconds
        self.retention_count = retention_count

    def _path(self, execution_id: str) -> Path | None:
        # The id names a file: only ids a request could carry (they are validated there).
        return self.directory / f"{execution_id}{_SUFFIX}" if EXECUTION_ID_RE.match(execution_id) else None

    def save(self, execution_id: str, result: ExecutionResult) -> bool:
        """Commit ``result`` durably (blocking); False when the disk refused."""
        path = self._path(execution_id)
        if path is None:
            return False
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            atomic_write(path, result.model_dump_json().encode())
        except OSError as exc:
            log.error("result_store_write_failed", execution_id=execution_id, error=str(exc))
            return False
        return True

    def load(self, execution_id: str) -> ExecutionResult | None:
        """The stored result of ``execution_id`` (None: never stored, pruned, or unreadable)."""
        path = self._path(execution_id)
        if path is None:
            return None
        try:
            return ExecutionResult.model_validate_json(path.read_bytes())
        except (OSError, ValueError):
            return None

    def forget(self, execution_id: str) -> None:
        path = self._path(execution_id)
        if path is not None:
            with contextlib.suppress(OSError):
                path.unlink()

    def prune(self) -> int:
        """Remove what the retention rules no longer keep (and interrupted writes)."""
        try:
            entries = list(os.scandir(self.directory))
        except OSError:
            return 0
        kept: list[tuple[float, str]] = []
        removed = 0
        horizon = time.time() - self.retention_seconds
        for entry in entries:
            try:
                mtime = entry.stat().st_mtime
                if entry.name.endswith(TMP_SUFFIX) or mtime < horizon:
                    os.unlink(entry.path)
                    removed += 1
                elif entry.name.endswith(_SUFFIX):
                    kept.append((mtime, entry.path))
            except OSError:
                continue
        kept.sort()
        for _, path in kept[: max(0, len(kept) - self.retention_count)]:
            with contextlib.suppress(OSError):
                os.unlink(path)
                removed += 1
        return removed
