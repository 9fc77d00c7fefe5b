"""The executor as an MCP server (official ``mcp`` SDK): ``run_code`` and workspace files.

One server definition, two transports: stdio with an embedded engine (``serve_stdio``, for
desktop agents; no daemon) and Streamable HTTP inside the daemon's app (mcp_http.py, which
loads this module on first use), where the daemon's bearer auth (EXECUTOR_API_TOKEN) guards
it like every other route.
The tools reach the sandbox only through an :class:`ExecutionBackend` and the workspace
only through :class:`~.files.WorkspaceFiles` (no link followed, nothing outside).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import os
import secrets
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, Protocol

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from pydantic import BaseModel, Field, ValidationError
from starlette.applications import Starlette

from . import __version__
from .config import Settings
from .errors import ExecutorError
from .files import WorkspaceFiles
from .models import ArtifactDetail, ExecuteRequest, ExecutionResult, Language

# read_file/write_file carry the whole file in one JSON message: bigger files go through
# GET/PUT /files/{path}.
MAX_TOOL_FILE_BYTES = 8 * 1024 * 1024
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class ExecutionBackend(Protocol):
    """Whatever runs a request to completion: the Engine, or the daemon's service."""

    async def execute(self, request: ExecuteRequest) -> ExecutionResult: ...


# ---------------------------------------------------------------------- tool outputs
class RunCodeOutput(BaseModel):
    execution_id: str = Field(
        description="the run's id (in the daemon: GET /executions/{id} and its /events)"
    )
    status: str = Field(description="success, failed, timeout or crashed")
    exit_code: int
    stdout: str
    stderr: str
    return_value: Any = Field(default=None, description="what handler(event) returned (python, javascript)")
    artifacts: list[ArtifactDetail] = Field(description="workspace files the run created or modified")
    termination_reason: str
    execution_time: float
    stdout_truncated: bool
    stderr_truncated: bool
    error: str | None = None


class FileInfo(BaseModel):
    name: str
    path: str
    type: str = Field(description="file, directory, symlink, fifo, socket, device or other")
    size: int
    mtime: str


class FileListing(BaseModel):
    path: str
    entries: list[FileInfo]
    truncated: bool


class FileContent(BaseModel):
    path: str
    size: int
    mime_type: str
    encoding: Literal["utf-8", "base64"]
    content: str


class FileWritten(BaseModel):
    path: str
    size: int


@contextmanager
def _as_tool_errors() -> Iterator[None]:
    """Domain errors become tool errors the model can read (and act on)."""
    try:
        yield
    except ExecutorError as exc:
        hint = f" {exc.solution}" if exc.solution else ""
        raise ToolError(f"{exc.error_code}: {exc.description}{hint}") from None
    except ValidationError as exc:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": str(exc)}
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise ToolError(f"Invalid request: {where}: {first.get('msg', '')}") from None


def new_execution_id() -> str:
    return f"mcp_{time.strftime('%Y%m%d%H%M%S', time.gmtime())}_{secrets.token_hex(4)}"


def build_server(
    backend: ExecutionBackend,
    files: WorkspaceFiles,
    *,
    default_timeout: int = 30,
    max_file_bytes: int = MAX_TOOL_FILE_BYTES,
) -> MCPServer:
    """The MCP server with its four tools."""
    server: MCPServer = MCPServer(
        "sandbox-executor",
        version=__version__,
        instructions=(
            "Runs code in an isolated sandbox (no network, limited memory/CPU/time) whose "
            "working directory is a persistent workspace; list_files, read_file and write_file "
            "reach the same workspace."
        ),
    )

    @server.tool(structured_output=True)
    async def run_code(
        language: Language,
        code: str,
        event: dict[str, Any] | None = None,
        timeout: int | None = None,  # noqa: ASYNC109 - the tool argument the issue names, in seconds
    ) -> RunCodeOutput:
        """Run code in a fresh sandbox and return its output.

        python: define `def handler(event):` (its return value is reported); javascript:
        `exports.handler = async (event) => ...` or a plain script; shell: a bash script
        (the event JSON is in the file $SANDBOX_EVENT_FILE). The working directory is the
        workspace: files written there persist and are listed as artifacts. `timeout` is in
        seconds (default 30, at most 3600).
        """
        with _as_tool_errors():
            request = ExecuteRequest(
                execution_id=new_execution_id(),
                language=language,
                code=code,
                event=event,
                timeout=timeout if timeout is not None else default_timeout,
            )
            result = await backend.execute(request)
        return RunCodeOutput(
            execution_id=request.execution_id,
            status=str(result.status),
            exit_code=result.exit_code,
            stdout=result.stdout,
            stderr=result.stderr,
            return_value=result.return_value,
            artifacts=result.artifact_details,
            termination_reason=str(result.termination_reason),
            execution_time=result.execution_time,
            stdout_truncated=result.stdout_truncated,
            stderr_truncated=result.stderr_truncated,
            error=result.error,
        )

    @server.tool(structured_output=True)
    def list_files(path: str = "") -> FileListing:
        """List a workspace directory (default: the workspace itself)."""
        with _as_tool_errors():
            listing = files.list_dir(path)
        return FileListing(
            path=listing.path,
            entries=[FileInfo(**vars(e)) for e in listing.entries],
            truncated=listing.truncated,
        )

    @server.tool(structured_output=True)
    async def read_file(path: str) -> FileContent:
        """Read a workspace file: UTF-8 text as is, anything else base64-encoded."""
        with _as_tool_errors():
            opened = files.open_file(path)
            if opened.size > max_file_bytes:
                opened.close()
                raise ToolError(f"{path} is {opened.size} bytes; read_file returns at most {max_file_bytes}.")
            data = await opened.read_all()
        try:
            content, encoding = data.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            content, encoding = base64.b64encode(data).decode("ascii"), "base64"
        return FileContent(
            path=opened.path,
            size=len(data),
            mime_type=opened.content_type,
            encoding=encoding,  # type: ignore[arg-type]
            content=content,
        )

    @server.tool(structured_output=True)
    async def write_file(
        path: str, content: str, encoding: Literal["utf-8", "base64"] = "utf-8"
    ) -> FileWritten:
        """Write a workspace file (parent directories are created; an existing file is replaced).

        `content` is text, or base64 when `encoding` is "base64" (for binary files).
        """
        try:
            data = (
                base64.b64decode(content, validate=True) if encoding == "base64" else content.encode("utf-8")
            )
        except (binascii.Error, UnicodeEncodeError) as exc:
            raise ToolError(f"content is not valid {encoding}: {exc}") from None
        if len(data) > max_file_bytes:
            raise ToolError(f"content is {len(data)} bytes; write_file takes at most {max_file_bytes}.")
        with _as_tool_errors():
            stored = await files.write_bytes(path, data)
        return FileWritten(path=stored.file.path, size=stored.file.size)

    return server


# ---------------------------------------------------------------------- backends
class LimitedEngine:
    """An engine used directly (stdio): at most ``limit`` runs at once, like the daemon."""

    def __init__(self, engine: ExecutionBackend, limit: int) -> None:
        self.engine = engine
        self._slots = asyncio.Semaphore(limit)

    async def execute(self, request: ExecuteRequest) -> ExecutionResult:
        async with self._slots:
            return await self.engine.execute(request)


# ---------------------------------------------------------------------- transports
def streamable_http_app(
    server: MCPServer,
    *,
    path: str = "/mcp",
    listen_host: str = "127.0.0.1",
    max_request_bytes: int = 16 * 1024 * 1024,
) -> Starlette:
    """``server`` over Streamable HTTP, as an app with one route at ``path``.

    ``server.session_manager.run()`` must be entered for as long as it serves (mcp_http.py
    does that). Stateless: every request stands alone, so nothing accumulates per client.
    Host/Origin checks (DNS rebinding) are on when the daemon listens on loopback; on other
    addresses the bearer token is the guard.
    """
    if listen_host in _LOOPBACK_HOSTS:
        security = TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*", "127.0.0.1", "localhost", "[::1]"],
            allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
        )
    else:
        security = TransportSecuritySettings(enable_dns_rebinding_protection=False)
    return server.streamable_http_app(
        streamable_http_path=path,
        stateless_http=True,
        transport_security=security,
        max_request_body_size=max_request_bytes,
    )


async def serve_stdio(settings: Settings) -> None:
    """``sandbox-executor mcp``: MCP over stdin/stdout with an embedded engine."""
    from .engine import Engine

    engine = Engine(settings)
    try:
        server = build_server(
            LimitedEngine(engine, settings.max_concurrent_executions),
            WorkspaceFiles.from_settings(settings),
            default_timeout=settings.default_timeout_seconds,
        )
        await server.run_stdio_async()
    finally:
        await engine.aclose()


def run_stdio(workspace: str | None = None) -> int:
    """``sandbox-executor mcp [--workspace DIR]``: serve until the client closes stdin."""
    import structlog

    # stdout is the protocol: every log line goes to stderr.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))
    settings = Settings()
    if workspace:
        settings = settings.model_copy(update={"workspace_path": os.path.abspath(workspace)})
        settings.__dict__.pop("workspace_dir", None)
    if not Path(settings.workspace_dir).is_dir():
        print(f"sandbox-executor mcp: no workspace directory {settings.workspace_dir}", file=sys.stderr)
        return 2
    asyncio.run(serve_stdio(settings))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m sandbox_executor.mcp_server``: the same as ``sandbox-executor mcp``."""
    parser = argparse.ArgumentParser(prog="sandbox-executor mcp", description=serve_stdio.__doc__)
    parser.add_argument("--workspace", help="workspace directory (default: WORKSPACE_PATH)")
    return run_stdio(parser.parse_args(argv).workspace)


if __name__ == "__main__":
    raise SystemExit(main())
