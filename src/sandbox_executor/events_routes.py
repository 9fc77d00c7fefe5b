"""Live output over HTTP: ``GET /executions/{id}/events``, and the stream that
``POST /execute?stream=true`` answers with (api.py).

Both serve the execution's :class:`~.streaming.EventLog` as Server-Sent Events (sse.py):
what was kept so far, then live, after the id a client last saw. What they refuse are
domain errors, turned into statuses by api.py's one table.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Header, Path, Query
from fastapi.responses import Response
from pydantic import BaseModel

from .config import Settings
from .errors import NotFound
from .models import EXECUTION_ID_RE
from .sse import MEDIA_TYPE, event_stream_response, parse_last_event_id
from .streaming import EventLogs

STREAM_DOC = (
    'with stream=true, Server-Sent Events, each with an id: `status` ({"status": "queued"|'
    '"running"}), `stdout`/`stderr` ({"data": text}, plus "truncated": true once a cap '
    "dropped output), then one `result` (the body of ?wait=true); `: ping` comments when idle"
)
# One event of the stream (OpenAPI describes a text/event-stream by its events).
EVENT_STREAM_CONTENT: dict[str, Any] = {
    MEDIA_TYPE: {
        "schema": {
            "type": "object",
            "required": ["event", "id", "data"],
            "properties": {
                "event": {"enum": ["status", "stdout", "stderr", "result"]},
                "id": {"type": "string", "pattern": "^[0-9]+$"},
                "data": {"type": "string", "contentMediaType": "application/json"},
            },
        }
    }
}
EVENT_ID_PATTERN = r"^[0-9]{0,18}$"  # empty: from the first event


def event_stream(logs: EventLogs, settings: Settings, execution_id: str, after: int) -> Response:
    """The events of ``execution_id`` after id ``after``, as a streaming response."""
    log = logs.get(execution_id)
    if log is None:
        raise NotFound(
            f"No execution {execution_id} (unknown or expired).",
            solution=f"Executions are kept for {settings.executions_retention_seconds} s "
            f"and at most {settings.executions_retention_count}.",
        )
    return event_stream_response(
        log,
        after,
        keepalive_seconds=settings.stream_keepalive_seconds,
        stall_timeout=settings.stream_stall_timeout_seconds,
    )


def add_event_routes(
    app: FastAPI,
    logs: EventLogs,
    settings: Settings,
    error_model: type[BaseModel],
    common: dict[int | str, Any],
) -> None:
    """Add ``GET /executions/{id}/events``; ``common`` documents the errors every route has."""

    @app.get(
        "/executions/{execution_id}/events",
        response_class=Response,
        responses={
            **common,
            200: {"content": EVENT_STREAM_CONTENT, "description": STREAM_DOC},
            404: {"model": error_model, "description": "Unknown or expired id"},
        },
        summary="Live output of an execution (text/event-stream): what was kept so far, then live",
    )
    async def execution_events(
        execution_id: str = Path(pattern=EXECUTION_ID_RE.pattern),
        last_event_id: str = Query(
            default="",
            pattern=EVENT_ID_PATTERN,
            description="Resume after this event id (for clients that cannot send Last-Event-ID)",
        ),
        last_event_id_header: str = Header(
            default="",
            alias="Last-Event-ID",
            pattern=EVENT_ID_PATTERN,
            description="Resume after this event id",
        ),
    ) -> Response:
        # A reconnecting EventSource sends the header; it is newer than its URL's query.
        after = parse_last_event_id(last_event_id_header or last_event_id)
        return event_stream(logs, settings, execution_id, after)
