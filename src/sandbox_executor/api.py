"""FastAPI routes: the inbound contract of docs/CONTRACT.md section 1, plus standalone niceties.

The only module that knows HTTP statuses: domain errors (``errors.py``) become answers
through :data:`STATUS_BY_ERROR`.
"""

from __future__ import annotations

import hmac
import time
import uuid
from typing import Any, Literal

import structlog
from fastapi import FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import __version__, metrics
from .dependencies import SyncRequest
from .errors import (
    Conflict,
    ExecutorError,
    InstallFailed,
    InternalError,
    InvalidRequest,
    NotFound,
    PathRefused,
    PayloadTooLarge,
    Unauthorized,
    Unavailable,
)
from .events_routes import EVENT_ID_PATTERN, EVENT_STREAM_CONTENT, STREAM_DOC, add_event_routes, event_stream
from .files import WorkspaceFiles
from .files_routes import UPLOAD_PREFIX, add_file_routes
from .mcp_http import McpEndpoint
from .models import EXECUTION_ID_RE, ExecuteRequest, ExecutionResult
from .service import ExecutionService
from .sse import parse_last_event_id

log = structlog.get_logger(__name__)


# ---------------------------------------------------------------------- schemas
class ErrorBody(BaseModel):
    error_code: str
    description: str
    error_detail: Any = Field(default="", description='"" when there is none, never null')
    solution: str = ""
    request_id: str


class ExecuteAccepted(BaseModel):
    """Answer to an accepted execution (the control plane needs execution_id and status)."""

    execution_id: str
    status: str = Field(description="queued, running, or the final status of a replayed id")
    message: str


class ExecutionWithId(ExecutionResult):
    """A final result together with its execution id."""

    execution_id: str


class ExecutionPending(BaseModel):
    execution_id: str
    status: Literal["queued", "running"]


class Health(BaseModel):
    status: Literal["healthy"]
    version: str
    uptime_seconds: float
    active_executions: int
    queued_executions: int
    isolation: Literal["bwrap", "bwrap-compat", "landlock", "none"]
    warm_sandboxes: int = 0
    warm_pool_memory_bytes: int = 0
    results_pending_delivery: int = 0
    results_undeliverable: int = 0
    memory_bounds: dict[str, str] | None = Field(
        default=None,
        description="How each run's processes are bounded together: mechanism "
        "(cgroup_v2, cgroup_v1, watchdog) and detail",
    )
    workspace_writes: dict[str, str] | None = Field(
        default=None, description="How MAX_WORKSPACE_WRITE_MB is measured: mode and detail"
    )


class Unhealthy(BaseModel):
    status: Literal["unhealthy"]
    reason: str
    storage: dict[str, Any] | None = Field(
        default=None,
        description="Set when RESULTS_DIR cannot make acceptances durable: reason "
        "(full, read_only, not_writable, io_error), detail, since",
    )


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "Invalid request"},
    401: {"model": ErrorBody, "description": "Missing or wrong bearer token (EXECUTOR_API_TOKEN)"},
    500: {"model": ErrorBody, "description": "Internal error"},
}


# ---------------------------------------------------------------------- middleware
class BodyLimitMiddleware:
    """Refuses bodies over ``limit`` bytes before anything parses them (400).

    It also reads every POST body as JSON whatever its Content-Type (every route takes
    JSON), so a `curl -d` without a header is not misread as a form. File uploads (PUT
    under UPLOAD_PREFIX) stream to disk under their own cap, MAX_UPLOAD_BYTES.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (
            scope.get("method") == "PUT" and str(scope.get("path", "")).startswith(UPLOAD_PREFIX)
        ):
            await self.app(scope, receive, send)
            return
        if scope.get("method") == "POST":
            headers = [(k, v) for k, v in scope.get("headers") or [] if k != b"content-type"]
            scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > self.limit
            except ValueError:
                too_big = True
            if too_big:
                await self._refuse(scope, receive, send)
                return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _BodyTooLarge()
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _BodyTooLarge:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        metrics.REJECTED.labels("body_too_large").inc()
        error = InvalidRequest(
            f"The request body exceeds {self.limit} bytes.",
            solution="Send at most 1 MiB of code and keep the whole body under the limit.",
        )
        await error_response(scope, error)(scope, receive, send)


class RequestContextMiddleware:
    """Request id (bound to every log line, echoed as X-Request-ID) and optional bearer auth.

    A plain ASGI middleware: Starlette's BaseHTTPMiddleware costs about half a millisecond
    per request on the hot /execute path.
    """

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = _request_id(scope)
        structlog.contextvars.bind_contextvars(request_id=rid)
        try:
            if self.expected is not None and scope.get("path") != "/health":
                supplied = dict(scope.get("headers") or []).get(b"authorization", b"")
                if not hmac.compare_digest(supplied, self.expected):
                    metrics.REJECTED.labels("unauthorized").inc()
                    error = Unauthorized("Missing or invalid bearer token.")
                    await error_response(scope, error)(scope, receive, send)
                    return

            async def send_with_id(message: Message) -> None:
                if message["type"] == "http.response.start":
                    MutableHeaders(scope=message)["X-Request-ID"] = rid
                await send(message)

            await self.app(scope, receive, send_with_id)
        finally:
            structlog.contextvars.unbind_contextvars("request_id")


class _BodyTooLarge(Exception):
    pass


def _request_id(scope: Scope) -> str:
    state = scope.setdefault("state", {})
    rid = state.get("request_id")
    if rid is None:
        header = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        rid = header if header and len(header) <= 128 and header.isprintable() else uuid.uuid4().hex
        state["request_id"] = rid
    return str(rid)


# The one place where a domain error becomes an HTTP status; the most specific class wins.
STATUS_BY_ERROR: dict[type[ExecutorError], int] = {
    InvalidRequest: 400,
    PathRefused: 403,
    PayloadTooLarge: 413,
    Unauthorized: 401,
    NotFound: 404,
    Conflict: 409,
    InstallFailed: 422,
    InternalError: 500,
    Unavailable: 503,
    ExecutorError: 500,
}


def status_for(error: ExecutorError) -> int:
    """The HTTP status of ``error``: the entry of its nearest class in STATUS_BY_ERROR."""
    for cls in type(error).__mro__:
        status = STATUS_BY_ERROR.get(cls)
        if status is not None:
            return status
    return 500


def error_headers(error: ExecutorError) -> dict[str, str]:
    headers = {}
    if error.retry_after is not None:
        headers["Retry-After"] = str(error.retry_after)
    if isinstance(error, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    return headers


def error_response(scope: Scope, error: ExecutorError) -> JSONResponse:
    """The JSON answer of docs/CONTRACT.md section 1 for ``error``."""
    return JSONResponse(
        error.body(_request_id(scope)), status_code=status_for(error), headers=error_headers(error)
    )


def _allowed_methods(app: FastAPI, scope: Scope) -> set[str]:
    """Every method some route serves at the request's path."""
    methods: set[str] = set()
    for route in app.router.routes:
        match, _ = route.matches(scope)
        if match != Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return methods


# ---------------------------------------------------------------------- app
def create_app(
    service: ExecutionService, *, files: WorkspaceFiles | None = None, mcp: McpEndpoint | None = None
) -> FastAPI:
    """The ASGI app around ``service``: the file routes serve ``files`` (default: the
    configured workspace), ``/mcp`` is served by ``mcp`` when given (the daemon's)."""
    settings = service.settings
    app = FastAPI(
        title="sandbox-executor",
        version=__version__,
        description="Runs untrusted code in Bubblewrap sandboxes; results by callback or ?wait=true.",
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = service

    app.add_middleware(RequestContextMiddleware, token=settings.executor_api_token)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_request_bytes)

    @app.exception_handler(ExecutorError)
    async def executor_error(request: Request, exc: ExecutorError) -> JSONResponse:
        return error_response(request.scope, exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        metrics.REJECTED.labels("invalid").inc()
        errors = exc.errors()
        detail = [
            {
                "loc": [str(p) for p in e.get("loc", ())],
                "msg": str(e.get("msg", "")),
                "type": str(e.get("type", "")),
            }
            for e in errors[:20]
        ]
        first = detail[0] if detail else {"loc": [], "msg": "invalid request"}
        where = ".".join(p for p in first["loc"] if p != "body") or "body"
        if first.get("type") == "json_invalid":
            description = "The request body is not valid JSON."
        else:
            description = f"Invalid request: {where}: {first['msg']}"
        return error_response(request.scope, InvalidRequest(description[:1000], detail))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Routing answers (no such route, wrong method): Starlette's status, our body.
        code = {404: NotFound.error_code, 405: "Executor.MethodNotAllowed"}.get(
            exc.status_code, "Executor.HTTPError"
        )
        body = {**ExecutorError(str(exc.detail)).body(_request_id(request.scope)), "error_code": code}
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # Starlette names the methods of the first route of the path only.
            headers["Allow"] = ", ".join(sorted(_allowed_methods(app, request.scope)))
        return JSONResponse(body, status_code=exc.status_code, headers=headers)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.error("internal_error", error_type=type(exc).__name__, exc_info=exc)
        return error_response(request.scope, InternalError("Internal error."))

    @app.post(
        "/execute",
        response_model=ExecuteAccepted | ExecutionWithId,
        responses={
            **_ERRORS,
            200: {
                "content": EVENT_STREAM_CONTENT,
                "description": "Accepted (JSON); with wait=true the final result; " + STREAM_DOC,
            },
            409: {"model": ErrorBody, "description": "Same execution_id, different payload"},
            503: {
                "model": ErrorBody,
                "description": "Queue full, shutting down, or RESULTS_DIR cannot store it (see Retry-After)",
            },
        },
        summary="Accept an execution (200 at once); ?wait=true answers with the result, "
        "?stream=true streams its output live (text/event-stream)",
    )
    async def execute(
        body: ExecuteRequest,
        wait: bool = Query(default=False, description="Answer with the final result when the run ends"),
        stream: bool = Query(
            default=False, description="Answer text/event-stream: status, stdout/stderr live, then result"
        ),
        last_event_id: str = Header(
            default="",
            alias="Last-Event-ID",
            pattern=EVENT_ID_PATTERN,
            description="With stream=true: resume after this event id",
        ),
    ) -> Any:
        if stream:
            after = parse_last_event_id(last_event_id)  # a bad id is a 400 before acceptance
            record, _ = service.submit(body)
            return event_stream(service.event_logs, settings, record.execution_id, after)
        record, created = service.submit(body)
        if wait:
            await record.done.wait()
            assert record.result is not None
            return ExecutionWithId(execution_id=record.execution_id, **record.result.model_dump())
        status = record.public_status()
        message = "Execution accepted" if created else f"Execution already accepted ({status})"
        return ExecuteAccepted(execution_id=record.execution_id, status=status, message=message)

    @app.get(
        "/executions/{execution_id}",
        response_model=ExecutionPending | ExecutionWithId,
        responses={**_ERRORS, 404: {"model": ErrorBody, "description": "Unknown or expired id"}},
        summary="State of an execution: queued, running, or its final result",
    )
    async def get_execution(execution_id: str = Path(pattern=EXECUTION_ID_RE.pattern)) -> Any:
        record = service.get(execution_id)
        if record is None:
            raise NotFound(
                f"No execution {execution_id} (unknown or expired).",
                solution=f"Executions are kept for {settings.executions_retention_seconds} s "
                f"and at most {settings.executions_retention_count}.",
            )
        return record.view()

    @app.get(
        "/health",
        response_model=Health,
        responses={503: {"model": Unhealthy, "description": "Sandboxes cannot run here now"}},
        summary="Liveness/readiness",
    )
    async def health() -> Any:
        problem = service.health_problem()
        if problem is not None:
            body: dict[str, Any] = {"status": "unhealthy", "reason": problem}
            storage = service.storage_problem()
            if storage is not None:
                body["storage"] = {"reason": storage.reason, "detail": storage.detail, "since": storage.since}
            return JSONResponse(body, status_code=503)
        pool = service.pool.stats() if service.pool is not None else None
        delivery = service.reporter.stats() if service.reporter is not None else None
        return Health(
            status="healthy",
            version=__version__,
            uptime_seconds=round(time.monotonic() - service.started_at, 3),
            active_executions=service.active,
            queued_executions=service.queued,
            isolation=service.engine.isolation,
            warm_sandboxes=pool.warm_sandboxes if pool is not None else 0,
            warm_pool_memory_bytes=pool.memory_bytes if pool is not None else 0,
            results_pending_delivery=delivery.pending if delivery is not None else 0,
            results_undeliverable=delivery.undeliverable if delivery is not None else 0,
            **(service.guards.describe() if service.guards is not None else {}),
        )

    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"}},
        summary="Prometheus metrics",
    )
    async def prometheus_metrics() -> Response:
        if service.pool is not None:
            metrics.record_pool(service.pool.stats())
        metrics.record_isolation(service.engine.isolation)
        return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)

    _add_dependency_route(app, service)
    add_event_routes(app, service.event_logs, settings, ErrorBody, _ERRORS)
    add_file_routes(app, files or WorkspaceFiles.from_settings(settings), ErrorBody, _ERRORS)
    if mcp is not None:
        # Not an OpenAPI route: the MCP protocol (Streamable HTTP), behind the same token.
        app.router.routes.append(mcp.route())
    return app


def _add_dependency_route(app: FastAPI, service: ExecutionService) -> None:
    @app.post(
        "/internal/session-config/sync",
        responses={
            **_ERRORS,
            422: {"model": ErrorBody, "description": "The install failed; previous set kept"},
            503: {"model": ErrorBody, "description": "Another sync is running, or shutting down"},
        },
        summary="Install the session's Python dependencies",
    )
    async def sync_dependencies(body: SyncRequest) -> Any:
        if service.dependencies is None:
            raise Unavailable("Dependency management is not configured.", retry_after=None)
        return await service.dependencies.sync(body)
