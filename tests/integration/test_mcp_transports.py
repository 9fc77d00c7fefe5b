"""The MCP server through the SDK's own client: over stdio to a real `sandbox-executor mcp`
(embedded engine, real bwrap) and over Streamable HTTP to a real `sandbox-executor serve`
(its bearer auth in front, a fake control plane behind), listing the tools and calling
every one of them."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client, MCPError, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from tests.support.fake_control_plane import FakeControlPlane
from tests.support.server import RunningServer, running_server

TOOLS = {"run_code", "list_files", "read_file", "write_file"}
TOKEN = "mcp-test-token-" + uuid.uuid4().hex[:12]
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4

pytestmark = pytest.mark.timeout(180)


async def exercise_every_tool(client: Client, workspace: Path) -> list[str]:
    """The same conversation over any transport; returns the ids of the runs it made."""
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
    return [run["execution_id"] for run in (python, js, shell, slow)]


STDIO_ENV = {
    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    "HOME": os.environ.get("HOME", "/root"),
    "LOG_LEVEL": "INFO",
}
CLI = str(Path(sys.executable).with_name("sandbox-executor"))


async def test_stdio_with_an_embedded_engine(workspace: Path) -> None:
    params = StdioServerParameters(command=CLI, args=["mcp", "--workspace", str(workspace)], env=STDIO_ENV)
    async with Client(params) as client:
        ids = await exercise_every_tool(client, workspace)
    assert all(eid.startswith("mcp_") for eid in ids)


def test_stdio_stdout_carries_nothing_but_the_protocol(workspace: Path) -> None:
    """Every line on stdout is a JSON-RPC message, while the engine, the spawner helper,
    bwrap and a run that prints all had their chance to write there."""
    messages = [
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "raw", "version": "0"},
            },
        },
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "run_code", "arguments": {"language": "shell", "code": "echo to-stdout"}},
        },
    ]
    proc = subprocess.Popen(
        [CLI, "mcp"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**STDIO_ENV, "WORKSPACE_PATH": str(workspace)},
    )
    assert proc.stdin is not None and proc.stdout is not None
    for message in messages:
        proc.stdin.write((json.dumps(message) + "\n").encode())
    proc.stdin.flush()
    lines = []
    while len(lines) < 2:
        line = proc.stdout.readline()
        assert line, proc.stderr.read().decode() if proc.stderr else ""
        lines.append(json.loads(line))
    proc.stdin.close()  # the client is gone: the server ends
    assert proc.wait(30) == 0
    rest = proc.stdout.read()
    assert rest.strip() == b"", rest
    assert [m.get("id") for m in lines] == [1, 2] and all(m["jsonrpc"] == "2.0" for m in lines)
    assert lines[1]["result"]["structuredContent"]["stdout"] == "to-stdout\n"


def test_stdio_without_a_workspace_says_so() -> None:
    proc = subprocess.run(
        [CLI, "mcp", "--workspace", "/nonexistent/ws"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2 and "no workspace directory /nonexistent/ws" in proc.stderr
    assert proc.stdout == ""


def leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaves(inner)]
    return [exc]


@pytest.fixture(scope="module")
def daemon() -> Iterator[tuple[RunningServer, FakeControlPlane]]:
    with FakeControlPlane() as cp:
        env = {"EXECUTOR_API_TOKEN": TOKEN, "CONTROL_PLANE_URL": cp.url, "DEFAULT_TIMEOUT_SECONDS": "30"}
        with running_server(env) as server:
            yield server, cp


async def test_streamable_http_in_the_daemon_behind_its_bearer_token(
    daemon: tuple[RunningServer, FakeControlPlane],
) -> None:
    server, cp = daemon
    url = f"{server.url}/mcp"
    # Without the token: the daemon's own 401, before MCP sees anything.
    async with httpx.AsyncClient() as plain:
        anonymous = await plain.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        assert anonymous.status_code == 401
        assert anonymous.json()["error_code"] == "Executor.Unauthorized"
        assert anonymous.headers["www-authenticate"] == "Bearer"
    with pytest.raises(BaseException) as denied_info:
        async with Client(streamable_http_client(url), read_timeout_seconds=10) as denied:
            await denied.list_tools()
    assert any(isinstance(e, MCPError) for e in leaves(denied_info.value)), denied_info.value

    http = httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {TOKEN}"}, timeout=httpx2.Timeout(30, read=120)
    )
    async with http, Client(streamable_http_client(url, http_client=http)) as client:
        ids = await exercise_every_tool(client, server.workspace)

    # The runs went through the daemon's queue: recorded and readable like any execution,
    # but never reported to the control plane, which did not ask for them.
    async with httpx.AsyncClient(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}) as authed:
        for eid in ids:
            record = await authed.get(f"/executions/{eid}")
            assert record.status_code == 200 and record.json()["status"] in ("success", "failed", "timeout")
            events = await authed.get(f"/executions/{eid}/events")
            assert events.status_code == 200 and "event: result" in events.text
        # An ordinary execution still is reported (the fake control plane is listening).
        body = {"execution_id": "exec_after_mcp", "language": "shell", "code": "echo ok"}
        assert (await authed.post("/execute?wait=true", json=body)).json()["status"] == "success"
    cp.wait_for("result", execution_id="exec_after_mcp", timeout=10)
    reported = {r.execution_id for r in cp.requests("result")} | {
        r.execution_id for r in cp.requests("heartbeat")
    }
    assert not reported & set(ids), reported


async def test_dns_rebinding_is_refused_on_a_loopback_daemon(
    daemon: tuple[RunningServer, FakeControlPlane],
) -> None:
    server, _ = daemon
    async with httpx.AsyncClient() as plain:
        rebound = await plain.post(
            f"{server.url}/mcp",
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            headers={
                "Host": "attacker.example",
                "Accept": "application/json, text/event-stream",
                "Authorization": f"Bearer {TOKEN}",
            },
        )
    assert rebound.status_code == 421, rebound.text


def test_the_daemon_does_not_load_the_sdk_until_mcp_is_used() -> None:
    probe = (
        "import sys; import sandbox_executor.daemon, sandbox_executor.cli; "
        "print(sorted(m for m in sys.modules if m == 'mcp' or m.startswith('mcp.')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"
