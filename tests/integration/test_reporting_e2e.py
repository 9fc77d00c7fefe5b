"""Reporting end to end: the real `sandbox-executor serve` and a real HTTP fake control plane.

Every scenario checks that no result is lost and none is reported twice with a different
outcome. The two scenarios that must wait out real clocks (a 20 s outage, a 12 s run with
5 s heartbeats) are marked slow.
"""

from __future__ import annotations

import itertools
import json
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.fake_control_plane import FakeControlPlane, RecordedRequest
from tests.support.server import RunningServer, start_server, stop_server

POD = "session-e2e-7f9c"

SLEEP_HANDLER = """
import time

def handler(event):
    time.sleep(event.get("seconds", 0))
    return {"slept": event.get("seconds", 0)}
"""


@pytest.fixture
def cp() -> Iterator[FakeControlPlane]:
    with FakeControlPlane() as fake:
        yield fake


@pytest.fixture
def base_dir() -> Iterator[Path]:
    # Outside pytest's 0700 tmp tree: the sandbox user must traverse to the workspace.
    path = Path(tempfile.mkdtemp(prefix="reporting-e2e-"))
    yield path
    import shutil

    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def servers() -> Iterator[list[RunningServer]]:
    started: list[RunningServer] = []
    yield started
    for server in started:
        stop_server(server)


def daemon_env(cp: FakeControlPlane, **extra: str) -> dict[str, str]:
    env = {
        "CONTROL_PLANE_URL": cp.url,
        "HOSTNAME": POD,
        "POD_NAME": POD,
        "INTERNAL_API_TOKEN": "e2e-token",
        "WARM_POOL_SIZE": "0",
    }
    env.update(extra)
    return env


def launch(servers: list[RunningServer], env: dict[str, str], base_dir: Path, **kw: Any) -> RunningServer:
    server = start_server(env, base_dir=base_dir, **kw)
    servers.append(server)
    return server


def execute(server: RunningServer, execution_id: str, seconds: float = 0) -> float:
    """POST /execute; returns the time.time() at which it was accepted."""
    response = httpx.post(
        f"{server.url}/execute",
        json={
            "execution_id": execution_id,
            "session_id": "sess-e2e",
            "code": SLEEP_HANDLER,
            "language": "python",
            "event": {"seconds": seconds},
            "timeout": 60,
        },
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return time.time()


def wait_state(
    server: RunningServer, execution_id: str, states: set[str], timeout: float = 20
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body = httpx.get(f"{server.url}/executions/{execution_id}", timeout=5).json()
        if body.get("status") in states:
            return dict(body)
        assert time.monotonic() < deadline, f"{execution_id} stuck in {body.get('status')}"
        time.sleep(0.05)


def assert_single_outcome(cp: FakeControlPlane, execution_id: str) -> dict[str, Any]:
    """Exactly one stored result; every attempt carried the same body."""
    attempts = cp.requests("result", execution_id)
    assert attempts, f"no result for {execution_id}"
    assert len({r.body for r in attempts}) == 1, "the same id was reported with different bodies"
    assert [r.status for r in attempts].count(201) == 1
    assert all(r.header("Idempotency-Key") == execution_id for r in attempts)
    assert all(r.header("Authorization") == "Bearer e2e-token" for r in attempts)
    return cp.accepted_results()[execution_id]


def log_events(server: RunningServer) -> list[dict[str, Any]]:
    events = []
    for line in server.log_lines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


def outbox_files(base_dir: Path, sub: str = "outbox") -> list[str]:
    return sorted(p.name for p in (base_dir / "results" / sub).glob("*.json"))


# ------------------------------------------------------------------------------ scenarios
@pytest.mark.slow
def test_control_plane_down_for_the_run_and_up_20s_later(
    cp: FakeControlPlane, base_dir: Path, servers: list[RunningServer]
) -> None:
    """Production retry settings (backoff 1, 2, 4, 8, 10 s): nothing is lost, ready included."""
    cp.stop()
    server = launch(servers, daemon_env(cp), base_dir)
    eid = "exec_20260101120000_0000000a"
    execute(server, eid, seconds=1)
    final = wait_state(server, eid, {"success", "failed", "timeout", "crashed"})
    assert final["status"] == "success"
    ended = time.monotonic()
    assert outbox_files(base_dir) == [f"{eid}.json"]
    time.sleep(max(0.0, 20 - (time.monotonic() - ended)))
    assert not cp.requests()
    cp.start()
    back = time.monotonic()
    [_result] = cp.wait_for("result", execution_id=eid, status=201, timeout=15)
    delivered_after = time.monotonic() - back
    assert delivered_after < 12  # the backoff is capped at 10 s between tries
    body = assert_single_outcome(cp, eid)
    assert body["status"] == "success" and body["return_value"] == {"slept": 1}
    assert body["artifacts"] == [] and body["metrics"]["duration_ms"] > 900
    cp.wait_for("ready", status=200, timeout=12)
    time.sleep(0.5)
    assert len(cp.requests("ready")) == 1  # retried while refused, acknowledged once
    deadline = time.monotonic() + 5
    while outbox_files(base_dir) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert outbox_files(base_dir) == []
    print(f"outage 20 s: result delivered {delivered_after:.2f} s after the control plane came back")


def test_sigkill_after_run_before_delivery_then_restart_delivers(
    cp: FakeControlPlane, base_dir: Path, servers: list[RunningServer]
) -> None:
    cp.hang(60, kind="result")
    first = launch(servers, daemon_env(cp), base_dir)
    eid = "exec_20260101120000_0000000b"
    execute(first, eid, seconds=0)
    [in_flight] = cp.wait_for("result", execution_id=eid, timeout=20)
    assert in_flight.status is None  # the control plane has not answered: not delivered
    first.process.send_signal(signal.SIGKILL)
    assert first.wait(5) == -signal.SIGKILL
    assert outbox_files(base_dir) == [f"{eid}.json"]

    cp.stop()  # drop the hung request
    cp.clear_rules()
    cp.start()
    second = launch(servers, daemon_env(cp), base_dir)
    cp.wait_for("result", execution_id=eid, status=201, timeout=10)
    body = assert_single_outcome(cp, eid)
    assert body["status"] == "success" and body["return_value"] == {"slept": 0}
    deadline = time.monotonic() + 5
    while outbox_files(base_dir) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert outbox_files(base_dir) == []
    assert second.process.poll() is None


@pytest.mark.parametrize("control_plane", ["up", "down", "hung"])
def test_sigterm_during_a_run(
    cp: FakeControlPlane, base_dir: Path, servers: list[RunningServer], control_plane: str
) -> None:
    server = launch(servers, daemon_env(cp, MAX_CONCURRENT_EXECUTIONS="1"), base_dir)
    cp.wait_for("ready", status=200, timeout=10)
    running, queued = "exec_20260101120000_0000000c", "exec_20260101120000_0000000d"
    execute(server, running, seconds=30)
    execute(server, queued, seconds=30)
    wait_state(server, running, {"running"})
    if control_plane == "down":
        cp.stop()
    elif control_plane == "hung":
        cp.hang(60)
    signalled = time.monotonic()
    server.signal(signal.SIGTERM)
    status = server.wait(5)
    elapsed = time.monotonic() - signalled
    assert status == 143
    assert elapsed < 2.0, f"exit took {elapsed:.2f} s"
    print(f"SIGTERM -> exit 143 in {elapsed:.2f} s (control plane {control_plane})")

    if control_plane == "up":
        [exited] = cp.wait_for("exited", timeout=1)
        body = exited.json
        assert body["container_id"] == POD and body["pod_name"] == POD
        assert body["exit_code"] == 143 and body["exit_reason"] == "sigterm"
        assert isinstance(body["exited_at"], str)
    else:
        # Both crashed results were committed durably; a later start delivers them.
        assert outbox_files(base_dir) == [f"{running}.json", f"{queued}.json"]
        if control_plane == "hung":
            assert len(cp.requests("exited")) == 1  # tried once, did not wait for it
        cp.stop()
        cp.clear_rules()
        cp.start()
        launch(servers, daemon_env(cp), base_dir)
        cp.wait_for("result", 2, status=201, timeout=10)
    for eid in (running, queued):
        result = assert_single_outcome(cp, eid)
        assert result["status"] == "crashed"
        assert result["termination_reason"] == "shutdown"
        assert result["exit_code"] == -1


@pytest.mark.slow
def test_heartbeats_5s_apart_during_a_12s_run_and_none_after_the_result(
    cp: FakeControlPlane, base_dir: Path, servers: list[RunningServer]
) -> None:
    server = launch(servers, daemon_env(cp, HEARTBEAT_INTERVAL="5"), base_dir)
    eid = "exec_20260101120000_0000000e"
    accepted = execute(server, eid, seconds=12)
    [result] = cp.wait_for("result", execution_id=eid, status=201, timeout=30)
    time.sleep(1.5)
    beats = cp.requests("heartbeat", eid)
    assert len(beats) in (2, 3), [b.arrived_at - accepted for b in beats]
    offsets = [b.arrived_at - accepted for b in beats]
    assert 4 <= offsets[0] <= 6.5, offsets
    gaps = [b.arrived_at - a.arrived_at for a, b in itertools.pairwise(beats)]
    assert all(4 <= gap <= 6 for gap in gaps), gaps
    assert all(b.arrived_at < result.arrived_at for b in beats)
    assert all(
        b.status == 200 and b.json["timestamp"] and isinstance(b.json["progress"], dict) for b in beats
    )
    assert assert_single_outcome(cp, eid)["status"] == "success"
    print(f"heartbeat offsets from acceptance: {[round(o, 2) for o in offsets]}")


def test_ready_sent_once_the_port_listens_and_retried_while_refused(
    cp: FakeControlPlane, base_dir: Path, servers: list[RunningServer]
) -> None:
    probes: list[bool] = []
    port_holder: dict[str, int] = {}

    def probe(record: RecordedRequest) -> None:
        if record.kind != "ready":
            return
        try:
            with socket.create_connection(("127.0.0.1", port_holder["port"]), timeout=1):
                probes.append(True)
        except OSError:
            probes.append(False)

    cp.on_request = probe
    cp.stop()
    server = launch(servers, daemon_env(cp, CALLBACK_MAX_BACKOFF_SECONDS="0.5"), base_dir, wait_ready=False)
    port_holder["port"] = server.port
    deadline = time.monotonic() + 20
    while True:  # the daemon's own port
        try:
            socket.create_connection(("127.0.0.1", server.port), timeout=0.2).close()
            break
        except OSError:
            assert time.monotonic() < deadline and server.process.poll() is None
            time.sleep(0.05)
    time.sleep(1.2)  # a few refused ready attempts
    cp.start()
    [ready] = cp.wait_for("ready", status=200, timeout=5)
    time.sleep(1.0)
    assert len(cp.requests("ready")) == 1
    assert probes == [True]  # the executor was already listening when it announced itself
    body = ready.json
    assert body["container_id"] == POD and body["pod_name"] == POD
    assert body["executor_port"] == server.port
    assert isinstance(body["ready_at"], str)
    refused = [
        e for e in log_events(server) if e.get("event") == "callback_failed" and e.get("kind") == "ready"
    ]
    assert len(refused) >= 2
    assert "e2e-token" not in server.log_path.read_text()


def test_422_lands_in_undeliverable_not_a_retry_loop(
    cp: FakeControlPlane, base_dir: Path, servers: list[RunningServer]
) -> None:
    cp.respond(422, kind="result", body={"detail": [{"loc": ["body", "artifacts"], "msg": "bad"}]})
    server = launch(servers, daemon_env(cp, OUTBOX_REPLAY_INTERVAL_SECONDS="0.5"), base_dir)
    eid = "exec_20260101120000_0000000f"
    execute(server, eid, seconds=0)
    cp.wait_for("result", execution_id=eid, timeout=20)
    time.sleep(2.0)  # four replay intervals
    assert len(cp.requests("result", eid)) == 1
    assert outbox_files(base_dir) == []
    assert outbox_files(base_dir, "undeliverable") == [f"{eid}.json"]
    kept = (base_dir / "results" / "undeliverable" / f"{eid}.json").read_bytes()
    meta = json.loads(kept.partition(b"\n")[0])
    assert meta["undeliverable"]["status_code"] == 422
    metrics = httpx.get(f"{server.url}/metrics", timeout=5).text
    assert "sandbox_results_undeliverable_total 1.0" in metrics
    errors = [e for e in log_events(server) if e.get("event") == "result_undeliverable"]
    assert len(errors) == 1 and errors[0]["level"] == "error" and errors[0]["status_code"] == 422
    assert errors[0]["execution_id"] == eid
