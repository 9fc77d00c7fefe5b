"""The daemon's ``/mcp`` route, loading the MCP SDK only when a client first uses it.

Importing the SDK costs the daemon about 27 MiB of resident memory and 0.3 s (measured;
the idle budget is 60 MiB), which a daemon nobody reaches over MCP should not pay. So this
module imports nothing of it: the first request builds the server (mcp_server.py) and
starts its session manager in a task of its own (its anyio task group must be entered and
left by the same task), and ``aclose`` stops it at shutdown.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol

from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from .files import WorkspaceFiles
from .models import ExecuteRequest, ExecutionResult

if TYPE_CHECKING:
    from .mcp_server import ExecutionBackend


class _Record(Protocol):
    @property
    def done(self) -> asyncio.Event: ...

    @property
    def result(self) -> ExecutionResult | None: ...


class _Submits(Protocol):
    def submit(self, request: ExecuteRequest, *, report: bool = True) -> tuple[_Record, bool]: ...


class ServiceBackend:
    """The daemon's queue as the tools' backend: MCP runs wait their turn and are recorded
    (visible at GET /executions/{id} and its /events), but never reported to the control
    plane, which did not ask for them and would refuse results for ids it never created."""

    def __init__(self, service: _Submits) -> None:
        self.service = service

    async def execute(self, request: ExecuteRequest) -> ExecutionResult:
        record, _ = self.service.submit(request, report=False)
        await record.done.wait()
        assert record.result is not None
        return record.result


class McpEndpoint:
    """An ASGI app for ``path`` that serves MCP over Streamable HTTP once loaded."""

    def __init__(
        self,
        backend: ExecutionBackend,
        files: WorkspaceFiles,
        *,
        default_timeout: int = 30,
        path: str = "/mcp",
        listen_host: str = "127.0.0.1",
        max_request_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self.backend = backend
        self.files = files
        self.default_timeout = default_timeout
        self.path = path
        self.listen_host = listen_host
        self.max_request_bytes = max_request_bytes
        self._app: ASGIApp | None = None
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None

    @property
    def loaded(self) -> bool:
        return self._app is not None

    def route(self) -> Route:
        """The route to add to the daemon's app (every method: GET, POST, DELETE)."""
        return Route(self.path, endpoint=self)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = self._app or await self._load()
        await app(scope, receive, send)

    async def _load(self) -> ASGIApp:
        async with self._lock:
            if self._app is not None:
                return self._app
            from .mcp_server import build_server, streamable_http_app

            server = build_server(self.backend, self.files, default_timeout=self.default_timeout)
            app = streamable_http_app(
                server, path=self.path, listen_host=self.listen_host, max_request_bytes=self.max_request_bytes
            )
            started = asyncio.Event()

            async def run_sessions() -> None:
                async with server.session_manager.run():
                    started.set()
                    await self._stop.wait()

            self._runner = asyncio.create_task(run_sessions(), name="mcp-sessions")
            waiter = asyncio.create_task(started.wait())
            await asyncio.wait({waiter, self._runner}, return_when=asyncio.FIRST_COMPLETED)
            if not started.is_set():
                waiter.cancel()
                await self._runner  # raises what stopped it
            self._app = app
            return app

    async def aclose(self) -> None:
        """Stop the session manager (daemon shutdown); a no-op if never loaded."""
        self._stop.set()
        if self._runner is not None:
            await self._runner
