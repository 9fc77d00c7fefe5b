"""Every body the control plane reads, validated with the strict models of
tests/support/contract_models.py (written from docs/CONTRACT.md).

They are fed what the real daemon answers over HTTP and what it really POSTs to a fake
control plane on loopback, in every case we can produce: replace, merge, no-op and empty
syncs, their 400/422 answers, accepted/replayed/refused executions and their results,
heartbeats, ready and exited.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbox_executor.api import create_app
from sandbox_executor.config import Settings
from sandbox_executor.engine import Engine
from sandbox_executor.service import ExecutionService
from tests.support.contract_models import (
    ErrorAnswer,
    ExecuteAnswer,
    ExitedBody,
    HeartbeatBody,
    ReadyBody,
    ResultBody,
    SyncAnswer,
)
from tests.support.fake_control_plane import FakeControlPlane
from tests.support.local_index import LocalIndex
from tests.support.server import RunningServer, start_server, stop_server

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap")

HOST = "session-shapes-5c1d"


# ---------------------------------------------------------------- the real daemon
@pytest.fixture(scope="module")
def cp() -> Iterator[FakeControlPlane]:
    with FakeControlPlane() as fake:
        yield fake


@pytest.fixture(scope="module")
def index() -> Iterator[LocalIndex]:
    with LocalIndex() as idx:
        idx.add_wheel("alpha", "1.0", {"alpha.py": "VALUE = 1\n"})
        idx.add_wheel("gamma", "1.0", {"gamma.py": "VALUE = 'g'\n"})
        yield idx


@pytest.fixture(scope="module")
def server(cp: FakeControlPlane) -> Iterator[RunningServer]:
    base = Path(tempfile.mkdtemp(prefix="contract-shapes-"))
    # No POD_NAME and no CONTAINER_ID, as the control plane's containers often have.
    srv = start_server(
        {
            "CONTROL_PLANE_URL": cp.url,
            "HOSTNAME": HOST,
            "HEARTBEAT_INTERVAL": "0.2",
            "WARM_POOL_SIZE": "0",
            "DEPENDENCY_INSTALL_TIMEOUT_SECONDS": "60",
        },
        base_dir=base,
    )
    yield srv
    stop_server(srv)
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def client(server: RunningServer) -> Iterator[httpx.Client]:
    with server.client(timeout=60) as c:
        yield c


def new_id() -> str:
    return f"exec_{uuid.uuid4().hex[:16]}"


def execute(client: httpx.Client, code: str, execution_id: str | None = None, **extra: Any) -> httpx.Response:
    body = {
        "execution_id": execution_id or new_id(),
        "session_id": "sess_shapes",
        "code": code,
        "language": "python",
        "timeout": 30,
        "event": {},
        "env_vars": {},
        **extra,
    }
    return client.post("/execute", json=body)


def sync(client: httpx.Client, index: LocalIndex, deps: list[str], mode: str) -> httpx.Response:
    return client.post(
        "/internal/session-config/sync",
        json={
            "session_id": "sess_shapes",
            "language_runtime": "python3.11",
            "python_package_index_url": index.url,
            "dependencies": deps,
            "sync_mode": mode,
        },
    )


def test_ready_body(server: RunningServer, cp: FakeControlPlane) -> None:
    [ready] = cp.wait_for("ready", status=200)
    body = ReadyBody.model_validate_json(ready.body)
    assert body.container_id == HOST and body.pod_name == HOST


@pytest.mark.parametrize(
    ("code", "status", "extra"),
    [
        ("def handler(event):\n    return {'x': [1, None]}\n", "success", {}),
        ("def handler(event):\n    raise ValueError('no')\n", "failed", {}),
        ("import time\ndef handler(event):\n    time.sleep(30)\n", "timeout", {"timeout": 1}),
        ("import os\ndef handler(event):\n    os._exit(3)\n", "failed", {}),
    ],
    ids=["success", "exception", "timeout", "exit-code"],
)
def test_execute_answer_and_callback_bodies(
    client: httpx.Client, cp: FakeControlPlane, code: str, status: str, extra: dict[str, Any]
) -> None:
    execution_id = new_id()
    answer = execute(client, code, execution_id, **extra)
    assert answer.status_code == 200, answer.text
    ExecuteAnswer.model_validate_json(answer.content)
    [delivered] = cp.wait_for("result", execution_id=execution_id, status=201, timeout=30)
    result = ResultBody.model_validate_json(delivered.body)
    assert result.status == status
    for beat in cp.requests("heartbeat", execution_id):
        HeartbeatBody.model_validate_json(beat.body)
    # The same id again: the replayed answer has the same shape.
    replay = execute(client, code, execution_id, **extra)
    assert replay.status_code == 200
    ExecuteAnswer.model_validate_json(replay.content)


def test_heartbeats_were_sent_and_match(cp: FakeControlPlane, client: httpx.Client) -> None:
    execution_id = new_id()
    assert (
        execute(client, "import time\ndef handler(event):\n    time.sleep(0.9)\n", execution_id).status_code
        == 200
    )
    cp.wait_for("result", execution_id=execution_id, status=201, timeout=30)
    beats = cp.requests("heartbeat", execution_id)
    assert beats, "a 0.9 s run with 0.2 s heartbeats sent none"
    for beat in beats:
        HeartbeatBody.model_validate_json(beat.body)


def test_execute_refusals_have_the_error_shape(client: httpx.Client) -> None:
    execution_id = new_id()
    refusals = [
        execute(client, "x", "../etc"),  # 400 bad id
        client.post("/execute", content=b"{not json"),  # 400 not JSON
        client.post("/execute", content=b"x" * (17 * 1024 * 1024)),  # 400 over the body cap
        client.get("/execute"),  # 405
        client.get(f"/executions/{new_id()}"),  # 404
    ]
    assert execute(client, "def handler(event):\n    return 1\n", execution_id).status_code == 200
    refusals.append(execute(client, "def handler(event):\n    return 2\n", execution_id))  # 409
    assert [r.status_code for r in refusals] == [400, 400, 400, 405, 404, 409]
    for response in refusals:
        ErrorAnswer.model_validate_json(response.content)


def test_sync_answers_on_every_path(client: httpx.Client, index: LocalIndex) -> None:
    paths = [
        (["alpha==1.0"], "replace", {"alpha"}),  # first install
        (["gamma"], "merge", {"alpha", "gamma"}),  # merge installs
        (["gamma", "alpha==1.0"], "replace", {"alpha", "gamma"}),  # no-op: same set
        ([], "merge", {"alpha", "gamma"}),  # no-op: merging nothing
        ([], "replace", set()),  # replace with nothing
        ([], "replace", set()),  # no-op on the empty set
    ]
    for deps, mode, names in paths:
        answer = sync(client, index, deps, mode)
        assert answer.status_code == 200, answer.text
        parsed = SyncAnswer.model_validate_json(answer.content)
        assert parsed.error == ""
        assert {d.name for d in parsed.installed_dependencies} == names


def test_sync_refusals_have_the_error_shape(client: httpx.Client, index: LocalIndex) -> None:
    invalid = sync(client, index, ["-r /etc/passwd"], "replace")
    failed = sync(client, index, ["no-such-project==1.0"], "merge")
    assert (invalid.status_code, failed.status_code) == (400, 422)
    for response in (invalid, failed):
        ErrorAnswer.model_validate_json(response.content)


# ---------------------------------------------------------------- answers of odd states
async def test_in_process_error_answers(tmp_path: Path) -> None:
    settings = Settings(
        workspace_path=str(tmp_path), results_dir=tmp_path / "results", executor_api_token="t0ken"
    )
    service = ExecutionService(settings, Engine(settings))
    await service.start()
    transport = httpx.ASGITransport(app=create_app(service))
    body = {"execution_id": "late", "language": "python", "code": "x"}
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        unauthorized = await client.post("/execute", json=body)
        await service.abort_all()  # what SIGTERM does first
        shutting_down = await client.post("/execute", json=body, headers={"Authorization": "Bearer t0ken"})
    assert (unauthorized.status_code, shutting_down.status_code) == (401, 503)
    for response in (unauthorized, shutting_down):
        ErrorAnswer.model_validate_json(response.content)


def test_exited_body_last(server: RunningServer, cp: FakeControlPlane) -> None:
    # Runs last in this module: it stops the daemon.
    server.signal(signal.SIGTERM)
    assert server.wait(10) == 143
    [exited] = cp.wait_for("exited", status=200)
    body = ExitedBody.model_validate_json(exited.body)
    assert body.container_id == HOST and body.pod_name == HOST
    assert (body.exit_code, body.exit_reason) == (143, "sigterm")
