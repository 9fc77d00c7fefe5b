"""The acceptance journal's record format: pure encoding and a forgiving reader.

One record per line, ASCII only: ``<crc32 of the JSON, 8 hex> <JSON>\\n``. The journal file
is zero-filled ahead of the records, so the first NUL byte marks its end. A line that is
torn (a crash mid-write), fails its checksum or carries values no request could have had
is skipped: the reader never raises on file content.
"""

from __future__ import annotations

import json
import re
import zlib
from dataclasses import dataclass
from typing import Any

from .errors import InvalidRequest

EXECUTION_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
MAX_SESSION_ID = 1024
MAX_LANGUAGE = 32
MAX_TIMEOUT = 86_400
# Longest line a valid record can make (a session id of 1024 characters escaped as \uXXXX).
MAX_LINE = 8192


@dataclass(frozen=True)
class Accepted:
    """What the journal keeps of an accepted execution: never its code, env or event."""

    execution_id: str
    session_id: str | None
    language: str
    timeout: int
    accepted_at: float  # seconds since the epoch


def validate(acc: Accepted) -> None:
    """Refuse values that must never reach the file (the id also names files and URLs)."""
    if not EXECUTION_ID.fullmatch(acc.execution_id):
        raise InvalidRequest("execution_id must match [A-Za-z0-9_-]{1,128}")
    if acc.session_id is not None and len(acc.session_id) > MAX_SESSION_ID:
        raise InvalidRequest(f"session_id is longer than {MAX_SESSION_ID} characters")
    if not acc.language or len(acc.language) > MAX_LANGUAGE:
        raise InvalidRequest("language is empty or too long")
    if not 0 <= acc.timeout <= MAX_TIMEOUT:
        raise InvalidRequest("timeout is out of range")


def _line(payload: dict[str, Any]) -> bytes:
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    data = text.encode("ascii")
    return b"%08x %s\n" % (zlib.crc32(data), data)


def encode_accept(acc: Accepted) -> bytes:
    return _line(
        {
            "e": "a",
            "id": acc.execution_id,
            "s": acc.session_id,
            "l": acc.language,
            "t": acc.timeout,
            "at": acc.accepted_at,
        }
    )


def encode_complete(execution_id: str) -> bytes:
    return _line({"e": "c", "id": execution_id})


def _decode(line: bytes) -> dict[str, Any] | None:
    if len(line) < 10 or line[8:9] != b" ":
        return None
    data = line[9:]
    try:
        if int(line[:8], 16) != zlib.crc32(data):
            return None
        doc = json.loads(data)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _accepted(doc: dict[str, Any]) -> Accepted | None:
    try:
        acc = Accepted(
            execution_id=str(doc["id"]),
            session_id=None if doc.get("s") is None else str(doc["s"]),
            language=str(doc["l"]),
            timeout=int(doc["t"]),
            accepted_at=float(doc["at"]),
        )
        validate(acc)
    except (KeyError, TypeError, ValueError, InvalidRequest):
        return None
    return acc


@dataclass(frozen=True)
class Replay:
    """What a journal file says: executions accepted and not completed, in order."""

    pending: dict[str, Accepted]
    records: int
    skipped: int
    end: int  # offset just past the last record (where the zero fill begins)


def replay(data: bytes) -> Replay:
    """Read a journal file's content; never raises."""
    end = data.find(b"\0")
    body = data if end < 0 else data[:end]
    pending: dict[str, Accepted] = {}
    records = skipped = 0
    lines = body.split(b"\n")
    complete_lines = lines[:-1]  # the last piece has no newline: empty, or torn
    if lines[-1]:
        skipped += 1
    for line in complete_lines:
        doc = _decode(line) if len(line) <= MAX_LINE else None
        if doc is None:
            skipped += 1
            continue
        records += 1
        if doc.get("e") == "a" and (acc := _accepted(doc)) is not None:
            pending.setdefault(acc.execution_id, acc)
        elif doc.get("e") == "c" and isinstance(doc.get("id"), str):
            pending.pop(doc["id"], None)
        else:
            skipped += 1
    return Replay(pending, records, skipped, len(body))
