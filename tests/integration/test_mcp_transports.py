"""The MCP server through the SDK's own client: over stdio to a real subprocess (embedded
engine, real bwrap) and over Streamable HTTP to a real uvicorn serving the daemon's app
(its bearer auth included), listing the tools and calling every one of them."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
import uvicorn
from mcp import Client, MCPError, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from sandbox_executor.api import create_app
from sandbox_executor.config import Settings
from sandbox_executor.engine import Engine
from sandbox_executor.files import WorkspaceFiles
from sandbox_executor.mcp_http import McpEndpoint
from sandbox_executor.mcp_server import ServiceBackend
from sandbox_executor.service import ExecutionService
from tests.support.server import free_port

TOOLS = {"run_code", "list_files", "read_file", "write_file"}
TOKEN = "mcp-test-token-" + os.urandom(6).hex()
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4

pytestmark = pytest.mark.timeout(180)


async def exercise_every_tool(client: Client, workspace: Path) -> None:
    """The same conversation over any transport."""
    listed = await client.list_tools()
    assert {tool.name for tool in listed.tools} == TOOLS
    for tool in listed.tools:
        assert tool.description and tool.output_schema, tool.name
    run_schema = next(t for t in listed.tools if t.name == "run_code").input_schema
    assert set(run_schema["properties"]) == {"language", "code", "event", "timeout"}
    assert run_schema["required"] == ["language", "code"]

    async def call(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        result = await client.call_tool(name, arguments)
        assert not result.is_error, result.content
        assert result.structured_content is not None
        return result.structured_content

    # write_file: text and binary, parents created; bytes land exactly.
    written = await call("write_file", {"path": "inputs/data.txt", "content": "3\n4\n"})
    assert written == {"path": "inputs/data.txt", "size": 4}
    await call(
        "write_file",
        {"path": "inputs/pic.png", "content": base64.b64encode(PNG).decode(), "encoding": "base64"},
    )
    assert (workspace / "inputs/pic.png").read_bytes() == PNG

    # run_code: the handler reads the input, writes an artifact, returns a value.
    python = await call(
        "run_code",
        {
            "language": "python",
            "code": (
                "import os\n"
                "def handler(event):\n"
                "    nums = [int(x) for x in open('inputs/data.txt').read().split()]\n"
                "    print('sum', sum(nums) * event['k'])\n"
                "    os.makedirs('out', exist_ok=True)\n"
                "    open('out/result.txt', 'w').write(str(sum(nums)))\n"
                "    return {'total': sum(nums) * event['k']}\n"
            ),
            "event": {"k": 10},
        },
    )
    assert python["status"] == "success", python
    assert (python["exit_code"], python["stdout"], python["return_value"]) == (0, "sum 70\n", {"total": 70})
    assert [(a["path"], a["change"], a["mime_type"]) for a in python["artifacts"]] == [
        ("out/result.txt", "created", "text/plain")
    ]
    js = await call(
        "run_code",
        {"language": "javascript", "code": "exports.handler = (e) => ({n: e.n * 2});", "event": {"n": 21}},
    )
    assert (js["status"], js["return_value"]) == ("success", {"n": 42})
    shell = await call("run_code", {"language": "shell", "code": "echo out; echo err >&2; exit 3"})
    assert (shell["status"], shell["exit_code"], shell["stdout"], shell["stderr"]) == (
        "failed",
        3,
        "out\n",
        "err\n",
    )
    slow = await call(
        "run_code",
        {"language": "python", "code": "import time\ndef handler(e):\n    time.sleep(30)", "timeout": 1},
    )
    assert (slow["status"], slow["termination_reason"]) == ("timeout", "timeout")

    # read_file / list_files see what the run wrote, and the uploads.
    text = await call("read_file", {"path": "out/result.txt"})
    assert (text["encoding"], text["content"], text["mime_type"]) == ("utf-8", "7", "text/plain")
    pic = await call("read_file", {"path": "inputs/pic.png"})
    assert (pic["encoding"], pic["mime_type"]) == ("base64", "image/png")
    assert base64.b64decode(pic["content"]) == PNG
    root = await call("list_files", {})
    assert {(e["name"], e["type"]) for e in root["entries"]} == {
        ("inputs", "directory"),
        ("out", "directory"),
    }
    inputs = await call("list_files", {"path": "inputs"})
    assert {e["path"]: e["size"] for e in inputs["entries"]} == {
        "inputs/data.txt": 4,
        "inputs/pic.png": len(PNG),
    }

    # Confinement: refused with the domain error's code, nothing read or written outside.
    (workspace / "escape").symlink_to("/etc")
    for name, arguments in (
        ("read_file", {"path": "../etc/passwd"}),
        ("read_file", {"path": "/etc/passwd"}),
        ("read_file", {"path": "escape/passwd"}),
        ("list_files", {"path": "escape"}),
        ("write_file", {"path": "escape/planted", "content": "x"}),
    ):
        refused = await client.call_tool(name, arguments)
        assert refused.is_error, (name, arguments)
        assert "Executor.PathRefused" in refused.content[0].text  # type: ignore[union-attr]
    assert not Path("/etc/planted").exists()
    missing = await client.call_tool("read_file", {"path": "nope.txt"})
    assert missing.is_error and "Executor.NotFound" in missing.content[0].text  # type: ignore[union-attr]
    bad = await client.call_tool("run_code", {"language": "cobol", "code": "x"})
    assert bad.is_error


async def test_stdio_with_an_embedded_engine(workspace: Path) -> None:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "WARM_POOL_SIZE": "0",
        "LOG_LEVEL": "WARNING",
    }
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "sandbox_executor.mcp_server", "--workspace", str(workspace)],
        env=env,
    )
    async with Client(params) as client:
        await exercise_every_tool(client, workspace)


def leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaves(inner)]
    return [exc]


@contextlib.asynccontextmanager
async def daemon_with_mcp(settings: Settings) -> AsyncIterator[tuple[str, McpEndpoint]]:
    """The daemon's real app (auth middleware included) with /mcp, on uvicorn."""
    engine = Engine(settings)
    service = ExecutionService(settings, engine)
    await service.start()
    app = create_app(service)
    endpoint = McpEndpoint(
        ServiceBackend(service),
        WorkspaceFiles.from_settings(settings),
        default_timeout=settings.default_timeout_seconds,
        listen_host="127.0.0.1",
    )
    app.router.routes.append(endpoint.route())
    port = free_port()
    web = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )

    task = asyncio.create_task(web.serve())
    try:
        while not web.started:
            assert not task.done(), task
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}", endpoint
    finally:
        web.should_exit = True
        await asyncio.wait_for(task, 15)
        await asyncio.wait_for(endpoint.aclose(), 15)
        await service.abort_all()
        await engine.aclose()


async def test_streamable_http_in_the_daemon_behind_its_bearer_token(
    workspace: Path, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(executor_api_token=TOKEN, default_timeout_seconds=30)
    async with daemon_with_mcp(settings) as (url, endpoint):
        # Without the token: the daemon's own 401, before MCP sees anything.
        async with httpx.AsyncClient() as plain:
            anonymous = await plain.post(
                f"{url}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
            )
            assert anonymous.status_code == 401
            assert anonymous.json()["error_code"] == "Executor.Unauthorized"
            assert anonymous.headers["www-authenticate"] == "Bearer"
        assert not endpoint.loaded, "the SDK loads on the first authorised request only"
        with pytest.raises(BaseException) as denied_info:
            async with Client(streamable_http_client(f"{url}/mcp"), read_timeout_seconds=10) as denied:
                await denied.list_tools()
        assert any(isinstance(e, MCPError) for e in leaves(denied_info.value)), denied_info.value

        http = httpx2.AsyncClient(
            headers={"Authorization": f"Bearer {TOKEN}"}, timeout=httpx2.Timeout(30, read=120)
        )
        async with http, Client(streamable_http_client(f"{url}/mcp", http_client=http)) as client:
            await exercise_every_tool(client, workspace)
        assert endpoint.loaded
        # The MCP runs went through the daemon's queue: recorded like any execution.
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}) as authed:
            health = await authed.get(f"{url}/health")
            assert health.status_code == 200


async def test_dns_rebinding_is_refused_on_a_loopback_daemon(make_settings: Callable[..., Settings]) -> None:
    async with daemon_with_mcp(make_settings()) as (url, _):
        async with httpx.AsyncClient() as plain:
            rebound = await plain.post(
                f"{url}/mcp",
                json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                headers={"Host": "attacker.example", "Accept": "application/json, text/event-stream"},
            )
        assert rebound.status_code == 421, rebound.text


def test_the_daemon_does_not_load_the_sdk_until_mcp_is_used() -> None:
    probe = (
        "import sys; import sandbox_executor.api, sandbox_executor.mcp_http; "
        "print(sorted(m for m in sys.modules if m == 'mcp' or m.startswith('mcp.')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"
