"""The warm pool through the real daemon: /health and /metrics report it, executions take
it, WARM_POOL_SIZE=0 turns it off."""

from __future__ import annotations

import os
import re
import time
import uuid
from typing import Any

import httpx

from tests.support.server import running_server


def _metric(text: str, name: str, **labels: str) -> float | None:
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"^{name}{{{wanted}}} (\S+)$" if labels else rf"^{name} (\S+)$"
    match = re.search(pattern, text, re.M)
    return float(match.group(1)) if match else None


def _wait_ready(client: httpx.Client, language: str, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = client.get("/metrics").text
        if (_metric(text, "sandbox_warm_pool_ready", language=language) or 0) >= 1:
            return text
        assert time.monotonic() < deadline, text
        time.sleep(0.02)


def _run(client: httpx.Client, code: str, language: str = "python") -> dict[str, Any]:
    body = {
        "execution_id": f"exec_{uuid.uuid4().hex[:16]}",
        "code": code,
        "language": language,
        "timeout": 10,
    }
    response = client.post("/execute", params={"wait": "true"}, json=body)
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_pool_is_reported_and_used() -> None:
    with running_server({"WARM_POOL_SIZE": "1"}) as server, server.client() as client:
        text = _wait_ready(client, "python")
        health = client.get("/health").json()
        assert health["warm_sandboxes"] == 1
        assert 2 * 2**20 < health["warm_pool_memory_bytes"] < 300 * 2**20
        assert (_metric(text, "sandbox_warm_pool_memory_bytes") or 0) > 2 * 2**20
        assert _metric(text, "sandbox_warm_pool_sandboxes", language="python") == 1

        first = _run(client, "def handler(event):\n    return 6 * 7\n")
        assert first["status"] == "success" and first["return_value"] == 42
        text = client.get("/metrics").text
        assert _metric(text, "sandbox_warm_pool_takes_total", language="python", outcome="hit") == 1

        # A language asked for once is kept warm from then on.
        assert _run(client, "echo hi\n", "shell")["stdout"] == "hi\n"
        text = _wait_ready(client, "shell")
        assert _metric(text, "sandbox_warm_pool_takes_total", language="shell", outcome="miss") == 1
        _wait_ready(client, "python")  # its replacement may still be booting on a busy machine
        assert client.get("/health").json()["warm_sandboxes"] == 2


def test_pool_size_zero_keeps_no_sandbox() -> None:
    with running_server({"WARM_POOL_SIZE": "0"}) as server, server.client() as client:
        time.sleep(0.3)
        health = client.get("/health").json()
        assert health["warm_sandboxes"] == 0 and health["warm_pool_memory_bytes"] == 0
        assert _run(client, "def handler(event):\n    return 1\n")["return_value"] == 1
        assert "sandbox_warm_pool_takes_total{" not in client.get("/metrics").text
        time.sleep(0.3)
        assert not [p for p in _descendants(server.process.pid) if _cmdline(p).startswith(b"bwrap")]


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            children.setdefault(int(stat[stat.rfind(b")") + 2 :].split()[1]), []).append(int(entry))
    found, stack = [], list(children.get(pid, []))
    while stack:
        child = stack.pop()
        found.append(child)
        stack.extend(children.get(child, []))
    return found


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""
