"""The journal's record format: round trip, and a reader that survives any file content."""

from __future__ import annotations

import json
import zlib

import pytest

from sandbox_executor.errors import InvalidRequest
from sandbox_executor.journal_records import (
    MAX_LINE,
    Accepted,
    encode_accept,
    encode_complete,
    replay,
    validate,
)

A = Accepted("exec_20250101000000_deadbeef", "sess-1", "python", 30, 1700000000.5)
B = Accepted("exec_2", None, "shell", 3600, 1700000001.0)
C = Accepted("exec-3_x", "s" * 1024, "javascript", 1, 1700000002.0)


def test_round_trip_keeps_only_what_is_pending() -> None:
    data = encode_accept(A) + encode_accept(B) + encode_complete(A.execution_id) + encode_accept(C)
    found = replay(data + b"\0" * 100)
    assert list(found.pending.values()) == [B, C]
    assert found.skipped == 0 and found.records == 4 and found.end == len(data)


def test_a_record_holds_identifiers_only() -> None:
    line = encode_accept(A)
    assert line.endswith(b"\n") and line.isascii() and len(line) < MAX_LINE
    assert set(json.loads(line[9:])) == {"e", "id", "s", "l", "t", "at"}
    assert len(encode_accept(Accepted("x", "\u2603" * 1024, "python", 1, 0.0))) < MAX_LINE


def test_torn_tail_is_dropped() -> None:
    whole = encode_accept(A) + encode_accept(B)
    for cut in range(len(encode_accept(A)) + 1, len(whole)):
        found = replay(whole[:cut] + b"\0" * 64)
        assert list(found.pending) == [A.execution_id], cut


@pytest.mark.parametrize(
    "junk",
    [
        b"garbage without checksum\n",
        b"00000000 {}\n",  # wrong checksum
        b"\xff\xfe\x00binary",  # a NUL ends the journal: what follows is not read
        b"%08x [1,2]\n" % zlib.crc32(b"[1,2]"),  # valid checksum, not an object
        b"x" * (MAX_LINE + 10) + b"\n",
    ],
)
def test_corrupt_lines_are_skipped_and_later_records_kept(junk: bytes) -> None:
    data = encode_accept(A) + junk + encode_accept(B)
    found = replay(data)
    assert A.execution_id in found.pending
    if b"\x00" not in junk:
        assert B.execution_id in found.pending
        assert found.skipped >= 1


def _forged(doc: dict[str, object]) -> bytes:
    data = json.dumps(doc).encode()
    return b"%08x %s\n" % (zlib.crc32(data), data)


@pytest.mark.parametrize(
    "doc",
    [
        {"e": "a", "id": "../../etc/passwd", "s": None, "l": "python", "t": 1, "at": 0},
        {"e": "a", "id": "a" * 129, "s": None, "l": "python", "t": 1, "at": 0},
        {"e": "a", "id": "ok", "s": None, "l": "python", "t": "NaN", "at": 0},
        {"e": "a", "id": "ok", "s": None, "l": "", "t": 1, "at": 0},
        {"e": "a", "id": "ok"},
        {"e": "z", "id": "ok"},
    ],
)
def test_records_no_request_could_have_made_are_skipped(doc: dict[str, object]) -> None:
    found = replay(_forged(doc))
    assert found.pending == {} and found.skipped == 1


@pytest.mark.parametrize("bad", ["", "a" * 129, "../x", "a b", "\u00e9t\u00e9", "x\n", "x/y", "x\0"])
def test_hostile_execution_ids_are_refused(bad: str) -> None:
    with pytest.raises(InvalidRequest):
        validate(Accepted(bad, None, "python", 30, 0.0))


def test_oversized_fields_are_refused() -> None:
    with pytest.raises(InvalidRequest):
        validate(Accepted("ok", "s" * 1025, "python", 30, 0.0))
    with pytest.raises(InvalidRequest):
        validate(Accepted("ok", None, "python", -1, 0.0))
