"""The HTTP service against a real daemon subprocess."""

from __future__ import annotations

import concurrent.futures
import json
import os
import statistics
import subprocess
import sys
import time
import uuid

import httpx
import pytest

from sandbox_executor.isolation import LEVELS
from tests.support import levels
from tests.support.server import REPO, RunningServer, running_server, start_server, stop_server

ERROR_KEYS = {"error_code", "description", "error_detail", "solution", "request_id"}


def new_id(prefix: str = "exec") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:16]}"


@pytest.fixture(scope="module")
def server() -> RunningServer:
    srv = start_server({"MAX_CONCURRENT_EXECUTIONS": "2", "MAX_QUEUED_EXECUTIONS": "10"})
    yield srv
    stop_server(srv)


@pytest.fixture()
def client(server: RunningServer) -> httpx.Client:
    with server.client() as c:
        yield c


def wait_result(client: httpx.Client, execution_id: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/executions/{execution_id}").json()
        if body["status"] not in ("queued", "running"):
            return body
        time.sleep(0.05)
    raise AssertionError(f"{execution_id} did not finish")


def test_control_plane_exact_request_gets_parseable_200(client: httpx.Client) -> None:
    # The body and headers the control plane sends (docs/CONTRACT.md section 1), plus an
    # unknown field that must be ignored.
    body = {
        "execution_id": "exec_20260101120000_0123abcd",
        "session_id": "sess_abc",
        "code": "def handler(event):\n    return {'n': event['n'] + 1}\n",
        "language": "python",
        "timeout": 30,
        "event": {"n": 1},
        "env_vars": {"SESSION_VAR": "1"},
        "some_future_field": {"x": 1},
    }
    resp = client.post("/execute", json=body)
    assert resp.status_code == 200
    data = resp.json()
    assert data["execution_id"] == body["execution_id"]
    assert isinstance(data["status"], str) and isinstance(data["message"], str)
    result = wait_result(client, body["execution_id"])
    assert result["status"] == "success"
    assert result["return_value"] == {"n": 2}


def test_wait_returns_full_result(client: httpx.Client) -> None:
    eid = new_id()
    resp = client.post(
        "/execute?wait=true",
        json={
            "execution_id": eid,
            "language": "javascript",
            "code": "exports.handler = async (e) => e.a * 2;",
            "event": {"a": 21},
        },
    )
    assert resp.status_code == 200
    data = resp.json()
    assert data["execution_id"] == eid
    assert data["status"] == "success" and data["return_value"] == 42
    for key in (
        "exit_code",
        "stdout",
        "stderr",
        "execution_time",
        "metrics",
        "artifacts",
        "termination_reason",
    ):
        assert key in data
    assert data["metrics"]["duration_ms"] >= 0


def test_shell_and_stdin(client: httpx.Client) -> None:
    eid = new_id()
    resp = client.post(
        "/execute?wait=true",
        json={
            "execution_id": eid,
            "language": "shell",
            "code": 'read line; echo "got:$line"',
            "stdin": "hello\n",
        },
    )
    assert resp.json()["stdout"] == "got:hello\n"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"execution_id": "a/../b", "code": "x", "language": "python"}, "execution_id"),
        ({"execution_id": "x" * 129, "code": "x", "language": "python"}, "execution_id"),
        ({"execution_id": "ok", "code": "x", "language": "ruby"}, "language"),
        ({"execution_id": "ok", "code": "x", "language": "python", "timeout": 0}, "timeout"),
        ({"execution_id": "ok", "code": "x", "language": "python", "timeout": 3601}, "timeout"),
        ({"execution_id": "ok", "code": "x", "language": "python", "event": [1, 2]}, "event"),
        ({"execution_id": "ok", "code": "x", "language": "python", "env_vars": {"A=B": "1"}}, "env_vars"),
        (
            {"execution_id": "ok", "code": "x", "language": "python", "env_vars": {"A": "a\u0000b"}},
            "env_vars",
        ),
        (
            {"execution_id": "ok", "code": "x", "language": "python", "env_vars": {"A": "v" * 70000}},
            "env_vars",
        ),
        ({"execution_id": "ok", "language": "python"}, "code"),
        ({"execution_id": "ok", "code": "x" * (1024 * 1024 + 1), "language": "python"}, "code"),
    ],
)
def test_validation_errors_are_400_with_error_body(client: httpx.Client, body: dict, fragment: str) -> None:
    resp = client.post("/execute", json=body)
    assert resp.status_code == 400, resp.text
    data = resp.json()
    assert set(data) >= ERROR_KEYS
    assert data["error_code"] == "Executor.ValidationError"
    assert fragment in json.dumps(data)


def test_body_not_json_is_400(client: httpx.Client) -> None:
    resp = client.post("/execute", content=b"{not json", headers={"content-type": "application/json"})
    assert resp.status_code == 400
    assert set(resp.json()) >= ERROR_KEYS


def test_body_over_cap_is_refused_before_parsing(client: httpx.Client) -> None:
    blob = b'{"execution_id": "big", "language": "python", "code": "' + b"x" * (17 * 1024 * 1024) + b'"}'
    resp = client.post("/execute", content=blob, headers={"content-type": "application/json"})
    assert resp.status_code == 400
    assert "exceeds" in resp.json()["description"]


def test_one_mib_of_code_and_event_fit_even_when_escaping_inflates_them(client: httpx.Client) -> None:
    # 1 MiB of code and a 1 MiB event are accepted whatever JSON escaping does to them:
    # newlines double, control characters grow sixfold (\u0001).
    prefix = "def handler(event):\n    return len(event['s'])\n"
    code = prefix + "\n" * (1024 * 1024 - len(prefix))
    event = {"s": "\x01" * (1024 * 1024 - 16)}
    body = json.dumps({"execution_id": new_id(), "language": "python", "code": code, "event": event})
    assert len(body) > 7 * 1024 * 1024  # the old 4 MiB cap refused this
    resp = client.post("/execute?wait=true", content=body, headers={"content-type": "application/json"})
    assert resp.status_code == 200, resp.text[:500]
    assert resp.json()["return_value"] == len(event["s"])


def test_idempotent_replay_runs_once_and_conflict_is_409(client: httpx.Client, server: RunningServer) -> None:
    eid = new_id()
    marker = f"runs-{eid}.log"
    body = {"execution_id": eid, "language": "shell", "code": f"echo run >> {marker}"}
    first = client.post("/execute", json=body)
    again = client.post("/execute", json=body)
    assert first.status_code == again.status_code == 200
    assert again.json()["execution_id"] == eid
    wait_result(client, eid)
    third = client.post("/execute", json=body)
    assert third.status_code == 200 and third.json()["status"] == "success"
    assert (server.workspace / marker).read_text() == "run\n"
    conflict = client.post("/execute", json={**body, "code": "echo different"})
    assert conflict.status_code == 409
    assert conflict.json()["error_code"] == "Executor.Conflict"


def test_get_execution_states_and_404(client: httpx.Client) -> None:
    assert client.get(f"/executions/{new_id()}").status_code == 404
    assert client.get("/executions/bad%2Fid").status_code in (400, 404)
    eid = new_id()
    client.post("/execute", json={"execution_id": eid, "language": "shell", "code": "sleep 1"})
    states = set()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        body = client.get(f"/executions/{eid}").json()
        states.add(body["status"])
        if body["status"] == "success":
            break
        time.sleep(0.05)
    assert "running" in states and "success" in states


def test_health_and_metrics(client: httpx.Client) -> None:
    health = client.get("/health")
    assert health.status_code == 200
    data = health.json()
    for key in ("status", "version", "uptime_seconds", "active_executions", "queued_executions", "isolation"):
        assert key in data
    assert data["status"] == "healthy" and data["isolation"] == levels.level()
    text = client.get("/metrics").text
    for level in LEVELS:
        value = 1.0 if level == levels.level() else 0.0
        assert f'sandbox_isolation_level{{level="{level}"}} {value}' in text
    for name in (
        "sandbox_executions_total",
        "sandbox_execution_duration_seconds",
        "sandbox_queue_wait_seconds",
        "sandbox_queue_depth",
        "sandbox_active_executions",
        "sandbox_rejected_requests_total",
    ):
        assert name in text


def test_openapi_documents_the_contract(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    assert {"/execute", "/executions/{execution_id}", "/health", "/metrics"} <= set(spec["paths"])
    post = spec["paths"]["/execute"]["post"]
    assert {"200", "400", "409", "503"} <= set(post["responses"])


def test_backpressure_twelve_long_executions() -> None:
    with running_server({"MAX_CONCURRENT_EXECUTIONS": "2", "MAX_QUEUED_EXECUTIONS": "10"}) as srv:
        ids = [new_id("load") for _ in range(14)]

        def submit(eid: str) -> httpx.Response:
            with srv.client() as c:
                return c.post(
                    "/execute", json={"execution_id": eid, "language": "shell", "code": "sleep 0.4; echo ok"}
                )

        with concurrent.futures.ThreadPoolExecutor(14) as pool:
            responses = list(pool.map(submit, ids))
        accepted = [eid for eid, r in zip(ids, responses, strict=True) if r.status_code == 200]
        rejected = [r for r in responses if r.status_code == 503]
        assert len(accepted) == 12, [r.status_code for r in responses]
        assert len(rejected) == 2
        for r in rejected:
            assert r.json()["error_code"] == "Executor.QueueFull"
            assert int(r.headers["Retry-After"]) >= 1
        with srv.client() as c:
            for eid in accepted:
                assert wait_result(c, eid)["stdout"] == "ok\n"
            assert "Executor.QueueFull" not in c.get("/metrics").text  # labels are reasons
            assert 'reason="queue_full"' in c.get("/metrics").text


def test_health_stays_fast_under_load() -> None:
    with (
        running_server({"MAX_CONCURRENT_EXECUTIONS": "1", "MAX_QUEUED_EXECUTIONS": "10"}) as srv,
        srv.client() as c,
    ):
        burn = "def handler(e):\n    import time\n    t = time.time()\n    while time.time() - t < 3: pass\n"
        for i in range(11):
            c.post(
                "/execute",
                json={"execution_id": new_id(f"cpu{i}"), "language": "python", "code": burn, "timeout": 5},
            )
        assert c.get("/health").json()["queued_executions"] >= 9
        latencies = []
        for _ in range(30):
            t0 = time.perf_counter()
            assert c.get("/health").status_code == 200
            latencies.append(time.perf_counter() - t0)
            time.sleep(0.02)
        assert statistics.median(latencies) < 0.05, latencies
        assert max(latencies) < 0.25, latencies


def test_bearer_token_required_when_configured() -> None:
    with running_server({"EXECUTOR_API_TOKEN": "s3cret-token"}) as srv, srv.client() as c:
        assert c.get("/health").status_code == 200
        body = {"execution_id": new_id(), "language": "shell", "code": "echo hi"}
        denied = c.post("/execute", json=body)
        assert denied.status_code == 401 and set(denied.json()) >= ERROR_KEYS
        assert c.post("/execute", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = c.post("/execute?wait=true", json=body, headers={"Authorization": "Bearer s3cret-token"})
        assert ok.status_code == 200 and ok.json()["stdout"] == "hi\n"
        assert c.get("/metrics").status_code == 401
        assert "s3cret-token" not in srv.log_path.read_text()


def test_health_unhealthy_when_workspace_gone() -> None:
    with running_server() as srv, srv.client() as c:
        assert c.get("/health").status_code == 200
        srv.workspace.rename(srv.workspace.with_name("moved"))
        resp = c.get("/health")
        assert resp.status_code == 503
        assert resp.json()["status"] == "unhealthy" and "workspace" in resp.json()["reason"]


def test_logs_are_json_lines_without_code_or_output() -> None:
    secret = f"CODE-MARKER-{uuid.uuid4().hex}"
    with running_server() as srv, srv.client() as c:
        eid = new_id()
        c.post(
            "/execute?wait=true",
            json={
                "execution_id": eid,
                "session_id": "sess-1",
                "language": "shell",
                "code": f"echo {secret}",
                "event": {"secret": secret},
            },
        )
        lines = srv.log_lines()
    assert lines
    parsed = [json.loads(line) for line in lines]
    for entry in parsed:
        assert {"timestamp", "level", "event"} <= set(entry)
    assert any(e.get("execution_id") == eid and e.get("session_id") == "sess-1" for e in parsed)
    assert any("request_id" in e for e in parsed)
    assert secret not in "\n".join(lines)


def test_refuses_to_start_when_the_pinned_level_cannot_be_had() -> None:
    with pytest.raises(RuntimeError, match="exited with 1") as refused:
        start_server({"BWRAP_PATH": "/nonexistent/bwrap", "SANDBOX_ISOLATION": "bwrap"}, ready_timeout=10)
    assert "SANDBOX_ISOLATION=bwrap is not available here" in str(refused.value)
    assert "remedy: install it: apt-get install -y bubblewrap" in str(refused.value)


def test_disable_bwrap_means_the_strongest_level_without_it() -> None:
    with running_server({"DISABLE_BWRAP": "true", "SANDBOX_ISOLATION": "auto"}) as srv, srv.client() as c:
        assert c.get("/health").json()["isolation"] == "landlock"
        assert 'sandbox_isolation_level{level="landlock"} 1.0' in c.get("/metrics").text
        assert not [line for line in srv.log_lines() if "isolation_disabled" in line]


def test_isolation_none_is_warned_at_start_and_per_run() -> None:
    with running_server({"SANDBOX_ISOLATION": "none"}) as srv, srv.client() as c:
        assert c.get("/health").json()["isolation"] == "none"
        c.post("/execute?wait=true", json={"execution_id": new_id(), "language": "shell", "code": "true"})
        warnings = [json.loads(line) for line in srv.log_lines() if "isolation_disabled" in line]
        assert len(warnings) >= 2  # at start and per execution


def test_cli_check_passes_here() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "sandbox_executor.cli", "check"],
        capture_output=True,
        text=True,
        env={**os.environ, "WORKSPACE_PATH": str(REPO)},
        timeout=60,
        check=False,
    )
    assert "[ok  ] isolation" in proc.stdout and "[ok  ] sandbox" in proc.stdout, proc.stdout + proc.stderr
