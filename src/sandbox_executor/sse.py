"""Server-Sent Events: the wire form of an :class:`~.streaming.EventLog`.

``encode_event`` / ``encode_comment`` are pure; ``sse_chunks`` is the async generator a
``StreamingResponse`` iterates; ``EventStreamResponse`` adds what a plain one lacks: a
client that stops reading is dropped after ``stall_timeout`` seconds instead of holding a
connection and a task forever (it never slowed the run: appending to the log waits for
nobody, and uvicorn's own write buffer, 64 KiB, is all that waits for the client).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from contextvars import ContextVar

import structlog
from starlette.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from .errors import InvalidRequest
from .streaming import Event, EventLog

log = structlog.get_logger(__name__)

MEDIA_TYPE = "text/event-stream"
HEADERS = {
    "Cache-Control": "no-cache",
    # Reverse proxies (nginx) would otherwise buffer the stream and defeat "live".
    "X-Accel-Buffering": "no",
}
KEEPALIVE_COMMENT = b": ping\n\n"
# The line terminators of the SSE grammar, and only those (str.splitlines knows more).
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_MAX_ID_DIGITS = 18


def encode_fields(data: str, *, event_id: int | None = None, event: str | None = None) -> bytes:
    """One SSE event: ``id:``, ``event:``, then one ``data:`` line per line of ``data``."""
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    if event is not None:
        if _LINE_BREAK.search(event):
            raise ValueError("an SSE event name cannot contain a line break")
        lines.append(f"event: {event}")
    if "\n" in data or "\r" in data:
        lines.extend(f"data: {line}" for line in _LINE_BREAK.split(data))
    else:  # JSON text never holds a raw line break: the common case skips the regex
        lines.append(f"data: {data}")
    return ("\n".join(lines) + "\n\n").encode("utf-8")


def encode_event(event: Event) -> bytes:
    return encode_fields(event.data, event_id=event.id, event=event.kind)


def encode_comment(text: str) -> bytes:
    """A comment (ignored by clients; keeps idle connections and proxies alive)."""
    return "".join(f": {line}\n" for line in _LINE_BREAK.split(text)).encode("utf-8") + b"\n"


def parse_last_event_id(value: str | None) -> int:
    """The ``Last-Event-ID`` header as an event id (0: from the start)."""
    if value is None or not value.strip():
        return 0
    text = value.strip()
    if not text.isascii() or not text.isdigit() or len(text) > _MAX_ID_DIGITS:
        raise InvalidRequest(
            f"Last-Event-ID must be the id of an event of this stream, not {text[:40]!r}.",
            solution="Send back the id: of the last event received, or omit the header.",
        )
    return int(text)


async def sse_chunks(
    event_log: EventLog, after: int = 0, keepalive_seconds: float = 15.0
) -> AsyncIterator[bytes]:
    """The encoded events after ``after``, live, with a comment every idle period."""
    async for event in event_log.follow(after, idle_timeout=keepalive_seconds):
        yield KEEPALIVE_COMMENT if event is None else encode_event(event)


# The event stream a request's task is serving (the server runs each request in a task
# of its own, and logs from it once the app returned).
_serving: ContextVar[EventStreamResponse | None] = ContextVar("event_stream", default=None)


class StalledStreamFilter(logging.Filter):
    """Drops the server's error for a response left unfinished when that response is a
    stream we cut off on purpose (``event_stream_client_stalled`` said so already)."""

    def filter(self, record: logging.LogRecord) -> bool:
        response = _serving.get()
        return not (response is not None and response.stalled and "without completing" in record.msg)


class EventStreamResponse(StreamingResponse):
    """A ``text/event-stream`` response that drops a client stalled for ``stall_timeout`` s."""

    def __init__(self, content: AsyncIterator[bytes], *, stall_timeout: float, execution_id: str) -> None:
        super().__init__(content, media_type=MEDIA_TYPE, headers=HEADERS)
        self.stall_timeout = stall_timeout
        self.execution_id = execution_id
        self.stalled = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        _serving.set(self)
        await super().__call__(scope, receive, send)

    async def stream_response(self, send: Send) -> None:
        async def bounded(message: Message) -> None:
            # uvicorn's send() waits while its write buffer is over the high-water mark:
            # that wait, and only that, is what a client that stopped reading costs.
            async with asyncio.timeout(self.stall_timeout):
                await send(message)

        chunks = 0
        try:
            await bounded(
                {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
            )
            async for chunk in self.body_iterator:
                await bounded({"type": "http.response.body", "body": chunk, "more_body": True})
                chunks += 1
            await bounded({"type": "http.response.body", "body": b"", "more_body": False})
        except TimeoutError:
            # Returning without finishing the body makes the server close the connection.
            self.stalled = True
            log.warning("event_stream_client_stalled", execution_id=self.execution_id, chunks_sent=chunks)
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()


def event_stream_response(
    event_log: EventLog,
    after: int = 0,
    *,
    keepalive_seconds: float = 15.0,
    stall_timeout: float = 60.0,
) -> EventStreamResponse:
    """The response of ``GET /executions/{id}/events`` (and of ``POST /execute?stream=true``):
    the events after id ``after`` (see :func:`parse_last_event_id`)."""
    return EventStreamResponse(
        sse_chunks(event_log, after, keepalive_seconds),
        stall_timeout=stall_timeout,
        execution_id=event_log.execution_id,
    )
