"""SSE wire encoding, checked against an independent parser written from the spec."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sandbox_executor.errors import InvalidRequest
from sandbox_executor.sse import (
    KEEPALIVE_COMMENT,
    encode_comment,
    encode_event,
    encode_fields,
    parse_last_event_id,
    sse_chunks,
)
from sandbox_executor.streaming import Event, EventLog
from tests.support.sse_client import SSEParser


def test_event_layout() -> None:
    wire = encode_event(Event(7, "stdout", '{"data":"hi"}'))
    assert wire == b'id: 7\nevent: stdout\ndata: {"data":"hi"}\n\n'


@pytest.mark.parametrize(
    ("data", "lines"),
    [
        ("a\nb", ["a", "b"]),
        ("a\r\nb", ["a", "b"]),
        ("a\rb", ["a", "b"]),
        ("a\n\nb\n", ["a", "", "b", ""]),
        ("", [""]),
        ("x\u2028y\x0bz", ["x\u2028y\x0bz"]),  # not SSE line breaks: kept in one line
    ],
)
def test_multi_line_data_is_split_on_sse_line_breaks_only(data: str, lines: list[str]) -> None:
    wire = encode_fields(data).decode()
    assert wire == "".join(f"data: {line}\n" for line in lines) + "\n"


@given(
    data=st.text(),
    event_id=st.integers(min_value=1, max_value=10**12),
    name=st.from_regex(r"[a-z]{1,10}", fullmatch=True),
)
def test_any_text_round_trips_through_a_spec_parser(data: str, event_id: int, name: str) -> None:
    parser = SSEParser()
    parser.feed(encode_fields(data, event_id=event_id, event=name))
    assert len(parser.events) == 1
    event = parser.events[0]
    assert (event.id, event.event) == (str(event_id), name)
    # SSE joins data lines with LF: every line break comes back as LF.
    assert event.data == re.sub(r"\r\n|\r|\n", "\n", data)


def test_event_names_cannot_break_lines() -> None:
    with pytest.raises(ValueError, match="line break"):
        encode_fields("x", event="a\nid: 9")


def test_comments() -> None:
    assert encode_comment("ping") == KEEPALIVE_COMMENT == b": ping\n\n"
    parser = SSEParser()
    parser.feed(encode_comment("two\nlines"))
    assert parser.comments == ["two", "lines"] and parser.events == []


@pytest.mark.parametrize(("header", "after"), [(None, 0), ("", 0), (" 12 ", 12), ("0", 0)])
def test_last_event_id(header: str | None, after: int) -> None:
    assert parse_last_event_id(header) == after


@pytest.mark.parametrize("header", ["abc", "-1", "1e3", "٣", "1.0", "9" * 40])
def test_malformed_last_event_id_is_a_validation_error(header: str) -> None:
    with pytest.raises(InvalidRequest):
        parse_last_event_id(header)


async def test_sse_chunks_are_the_encoded_events_with_keepalives_while_idle() -> None:
    log = EventLog("e", 1 << 20)
    log.status("queued")
    chunks: list[bytes] = []

    async def read() -> None:
        async for chunk in sse_chunks(log, 0, keepalive_seconds=0.05):
            chunks.append(chunk)

    task = asyncio.create_task(read())
    await asyncio.sleep(0.18)
    log.status("running")
    await asyncio.sleep(0.01)
    from sandbox_executor.models import ExecutionResult, TerminationReason

    log.finish(
        ExecutionResult(
            status="success", exit_code=0, execution_time=0.1, termination_reason=TerminationReason.EXITED
        )
    )
    await asyncio.wait_for(task, 1)
    parser = SSEParser()
    for chunk in chunks:
        parser.feed(chunk)
    assert [e.event for e in parser.events] == ["status", "status", "result"]
    assert [e.id for e in parser.events] == ["1", "2", "3"]
    assert json.loads(parser.events[-1].data)["execution_id"] == "e"
    assert 2 <= parser.comments.count("ping") <= 4
    assert chunks[1] == KEEPALIVE_COMMENT
