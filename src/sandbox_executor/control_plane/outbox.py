"""The on-disk store of results not yet acknowledged: one file per execution.

``RESULTS_DIR/outbox/<execution_id>.json`` is written durably before anything is sent and
removed after a 2xx; a permanent refusal moves it to ``RESULTS_DIR/undeliverable/`` with
the reason. A file is one line of JSON metadata, a newline, then the exact JSON body that
is POSTed (compact JSON never holds a raw newline), so a 30 MiB result is serialised once.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..durable import TMP_SUFFIX, atomic_write, fsync_dir
from ..models import EXECUTION_ID_RE
from .bodies import encode_json

OUTBOX_DIRNAME = "outbox"
UNDELIVERABLE_DIRNAME = "undeliverable"
_SUFFIX = ".json"


@dataclass(frozen=True)
class Envelope:
    """One result as it is kept and sent."""

    execution_id: str
    session_id: str | None
    submitted_at: float  # wall clock, so latency survives a restart
    body: bytes


class Outbox:
    """The on-disk store of results not yet acknowledged (one file per execution)."""

    def __init__(self, results_dir: Path) -> None:
        self.pending_dir = results_dir / OUTBOX_DIRNAME
        self.undeliverable_dir = results_dir / UNDELIVERABLE_DIRNAME

    def ensure_dirs(self) -> None:
        for directory in (self.pending_dir, self.undeliverable_dir):
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def path(self, execution_id: str) -> Path:
        return self.pending_dir / f"{execution_id}{_SUFFIX}"

    def undeliverable_path(self, execution_id: str) -> Path:
        return self.undeliverable_dir / f"{execution_id}{_SUFFIX}"

    def exists(self, execution_id: str) -> bool:
        return self.path(execution_id).exists() or self.undeliverable_path(execution_id).exists()

    def write(self, envelope: Envelope) -> None:
        meta = {
            "version": 1,
            "execution_id": envelope.execution_id,
            "session_id": envelope.session_id,
            "submitted_at": envelope.submitted_at,
        }
        self.ensure_dirs()
        atomic_write(self.path(envelope.execution_id), encode_json(meta) + b"\n" + envelope.body)

    def read(self, execution_id: str) -> Envelope:
        """Load one pending result; raises ValueError when the file is corrupt."""
        raw = self.path(execution_id).read_bytes()
        head, sep, body = raw.partition(b"\n")
        if not sep:
            raise ValueError("no metadata line")
        meta = json.loads(head)
        json.loads(body)  # a body we cannot parse would only earn a 4xx
        if meta.get("execution_id") != execution_id:
            raise ValueError("execution_id does not match the file name")
        return Envelope(execution_id, meta.get("session_id"), float(meta["submitted_at"]), body)

    def remove(self, execution_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(execution_id).unlink()

    def move_to_undeliverable(self, execution_id: str, reason: dict[str, Any]) -> None:
        """Keep the result with the reason it could not be delivered, out of the replay set."""
        src = self.path(execution_id)
        try:
            raw = src.read_bytes()
        except FileNotFoundError:
            return
        head, _, body = raw.partition(b"\n")
        try:
            meta = json.loads(head)
        except ValueError:
            meta = {"execution_id": execution_id, "corrupt_metadata": True}
        meta["undeliverable"] = reason
        self.ensure_dirs()
        atomic_write(self.undeliverable_path(execution_id), encode_json(meta) + b"\n" + body)
        src.unlink(missing_ok=True)
        fsync_dir(self.pending_dir)

    def scan(self) -> list[str]:
        """Ids of pending results, oldest first; removes temp files of interrupted writes."""
        entries: list[tuple[float, str]] = []
        try:
            iterator = os.scandir(self.pending_dir)
        except FileNotFoundError:
            return []
        with iterator:
            for entry in iterator:
                name = entry.name
                if name.endswith(TMP_SUFFIX) and name.startswith("."):
                    # Only our own pid could be writing it right now.
                    if f".{os.getpid()}{TMP_SUFFIX}" not in name:
                        with contextlib.suppress(OSError):
                            os.unlink(entry.path)
                    continue
                if not name.endswith(_SUFFIX):
                    continue
                execution_id = name[: -len(_SUFFIX)]
                if not EXECUTION_ID_RE.match(execution_id):
                    continue
                with contextlib.suppress(OSError):
                    entries.append((entry.stat().st_mtime, execution_id))
        return [eid for _, eid in sorted(entries)]

    def count_undeliverable(self) -> int:
        try:
            return sum(1 for name in os.listdir(self.undeliverable_dir) if name.endswith(_SUFFIX))
        except FileNotFoundError:
            return 0
