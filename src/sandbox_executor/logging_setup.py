"""JSON logs on stdout, one object per line, uvicorn's own lines included.

Fields: timestamp, level, event, and whatever is bound in the context (execution_id,
session_id, container_id, request_id). Code, output, event contents and tokens are never
logged: callers pass identifiers and sizes only.
"""

from __future__ import annotations

import logging
import sys

import structlog

from .sse import StalledStreamFilter

_SHARED: list[structlog.types.Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def configure_logging(level: str = "INFO", container_id: str | None = None) -> None:
    """Route structlog and stdlib logging (uvicorn included) through one JSON renderer."""
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_SHARED,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
    # A live-output client dropped for stalling is a warning of ours, not a server error.
    logging.getLogger("uvicorn.error").addFilter(StalledStreamFilter())
    # One INFO line per callback (every heartbeat) is noise; the reporter logs outcomes.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    # The MCP SDK logs every tool call and failure at INFO, arguments (paths) included:
    # user data stays out of the daemon's log.
    logging.getLogger("mcp").setLevel(max(logging.WARNING, root.level))
    # Access lines would carry query strings only; keep them at the daemon's level.
    structlog.configure(
        processors=[*_SHARED, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    if container_id:
        structlog.contextvars.bind_contextvars(container_id=container_id)
