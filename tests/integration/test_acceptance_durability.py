"""Acknowledged means durable, through the real daemon: a SIGKILL mid-run, a restart, a
real full filesystem, a RESULTS_DIR the daemon may not write.

Every POST /execute answered 200 was journaled first (RESULTS_DIR/journal); the next start
reports each one that never got its result as ``crashed``, through the outbox and the
callback, and answers it at GET /executions/{id} and to a replayed POST.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbox_executor.poller import Poller
from sandbox_executor.run_bounds import BoundsUnavailable, detect_bounds
from tests.integration.conftest import processes_with
from tests.support.fake_control_plane import FakeControlPlane
from tests.support.server import RunningServer, start_server, stop_server

IS_ROOT = os.geteuid() == 0

# Leaves a process of its own session behind (it outlives a process-group kill), then waits.
LINGER = """
import os, subprocess, sys, time
def handler(event):
    if os.fork() == 0:
        os.setsid()
        os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(120)", {marker!r}])
    open("started-{marker}", "w").close()
    time.sleep(120)
"""


@pytest.fixture
def base_dir() -> Iterator[Path]:
    # Outside pytest's 0700 tree: the sandbox user must traverse to the workspace.
    path = Path(tempfile.mkdtemp(prefix="durability-"))
    yield path
    subprocess.run(["rm", "-rf", "--one-file-system", "--", str(path)], check=False)


@pytest.fixture
def servers() -> Iterator[list[RunningServer]]:
    started: list[RunningServer] = []
    yield started
    for server in started:
        stop_server(server)


def launch(servers: list[RunningServer], base_dir: Path, env: dict[str, str], **kw: Any) -> RunningServer:
    server = start_server(env, base_dir=base_dir, **kw)
    servers.append(server)
    return server


def post(server: RunningServer, eid: str, code: str, **params: str) -> httpx.Response:
    body = {"execution_id": eid, "session_id": "sess-durable", "language": "python", "code": code}
    return httpx.post(f"{server.url}/execute", params=params, json={**body, "timeout": 120}, timeout=30)


def wait_for_file(path: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.02)


def wait_gone(marker: str, timeout: float = 5) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := processes_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return left


def kill_mid_run(servers: list[RunningServer], base_dir: Path, env: dict[str, str]) -> tuple[str, list[str]]:
    """Accept one running and two queued executions, then SIGKILL the daemon."""
    marker = "sbxdur" + uuid.uuid4().hex[:10]
    server = launch(servers, base_dir, {**env, "MAX_CONCURRENT_EXECUTIONS": "1"})
    ids = [f"exec_20260101120000_{uuid.uuid4().hex[:8]}" for _ in range(3)]
    for eid in ids:
        assert post(server, eid, LINGER.format(marker=marker)).status_code == 200
    wait_for_file(server.workspace / f"started-{marker}")
    assert processes_with(marker), "the run's own-session child is not running"
    server.process.send_signal(signal.SIGKILL)
    assert server.wait(5) == -signal.SIGKILL
    return marker, ids


def assert_crashed(doc: dict[str, Any]) -> None:
    assert doc["status"] == "crashed", doc
    assert doc["exit_code"] == -1
    assert doc["termination_reason"] == "restarted"
    assert "restarted during the execution" in doc["error"]


def test_a_sigkilled_daemons_accepted_executions_are_reported_crashed_after_restart(
    base_dir: Path, servers: list[RunningServer]
) -> None:
    with FakeControlPlane() as cp:
        env = {"CONTROL_PLANE_URL": cp.url, "HOSTNAME": "durable-pod"}
        marker, ids = kill_mid_run(servers, base_dir, env)
        # Nothing of the run outlives the daemon, not even its setsid'd child.
        assert wait_gone(marker) == []
        assert cp.requests("result") == []

        second = launch(servers, base_dir, env)
        for eid in ids:
            [delivered] = cp.wait_for("result", execution_id=eid, status=201, timeout=10)
            assert_crashed(delivered.json)
            assert_crashed(httpx.get(f"{second.url}/executions/{eid}", timeout=5).json())
            # The control plane's retry of the same request: the final status, no new run.
            replay = post(second, eid, LINGER.format(marker=marker))
            assert replay.status_code == 200 and replay.json()["status"] == "crashed", replay.text
        assert not (second.workspace / f"started-{marker}-again").exists()
        stop_server(second)

        # Reported once: the journal marked them complete, a later start leaves them alone.
        third = launch(servers, base_dir, env)
        assert httpx.get(f"{third.url}/executions/{ids[0]}", timeout=5).status_code == 404
        assert len(cp.requests("result")) == 3


def test_standalone_a_restart_answers_finished_and_interrupted_executions(
    base_dir: Path, servers: list[RunningServer]
) -> None:
    # Without a control plane, whoever polls is the only reader: a result must outlive
    # the daemon too, as well as the acceptance of a run it never finished.
    first = launch(servers, base_dir, {})
    finished = f"exec_{uuid.uuid4().hex[:16]}"
    counted = "import os\ndef handler(event):\n    return len(os.listdir('.'))\n"
    done = post(first, finished, counted, wait="true")
    assert done.status_code == 200 and done.json()["status"] == "success", done.text
    marker = "sbxdur" + uuid.uuid4().hex[:10]
    interrupted = f"exec_{uuid.uuid4().hex[:16]}"
    assert post(first, interrupted, LINGER.format(marker=marker)).status_code == 200
    wait_for_file(first.workspace / f"started-{marker}")
    first.process.send_signal(signal.SIGKILL)
    assert first.wait(5) == -signal.SIGKILL
    assert wait_gone(marker) == []

    second = launch(servers, base_dir, {})
    assert httpx.get(f"{second.url}/executions/{finished}", timeout=5).json() == {
        "execution_id": finished,
        **done.json(),
    }
    assert_crashed(httpx.get(f"{second.url}/executions/{interrupted}", timeout=5).json())
    for eid, code, status in ((finished, counted, "success"), (interrupted, LINGER, "crashed")):
        replay = post(second, eid, code, wait="true")
        assert replay.status_code == 200 and replay.json()["status"] == status, replay.text
    # Neither ran again: the interrupted run's marker file is the only one.
    assert [p.name for p in second.workspace.iterdir()] == [f"started-{marker}"]


def _v1_unavailable() -> str | None:
    poller = Poller()
    try:
        detect_bounds(poller, "cgroup_v1").close()
    except BoundsUnavailable as exc:
        return exc.description
    finally:
        poller.close()
    return None


def test_start_up_sweeps_the_cgroups_a_killed_daemon_left(
    base_dir: Path, servers: list[RunningServer]
) -> None:
    why = _v1_unavailable()
    if why is not None:
        pytest.skip(f"cgroup v1 unavailable here: {why}")
    # Without bwrap or a supervisor there is no pid namespace or subreaper whose end takes
    # the run along: what the killed daemon's run left is found by its cgroup at the next
    # start.
    env = {"SANDBOX_ISOLATION": "none", "RUN_BOUNDS_MECHANISM": "cgroup_v1"}
    marker, _ = kill_mid_run(servers, base_dir, env)
    time.sleep(0.3)  # the spawner's own death signal has landed by now
    assert processes_with(marker), "nothing survived the daemon: this test would prove nothing"
    launch(servers, base_dir, env)
    assert wait_gone(marker, timeout=1) == []


def _metric(server: RunningServer, name: str, reason: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=5).text
    found = re.search(rf'^{name}\{{reason="{reason}"\}} ([0-9.e+]+)$', text, re.M)
    return float(found[1]) if found else 0.0


def assert_refused(server: RunningServer, reason: str) -> None:
    before = _metric(server, "sandbox_storage_unavailable_total", reason)
    refused = post(server, f"exec_{uuid.uuid4().hex[:16]}", "def handler(event):\n    return 1\n")
    assert refused.status_code == 503, refused.text
    assert refused.json()["error_code"] == "Executor.StorageUnavailable"
    assert int(refused.headers["Retry-After"]) > 0
    assert _metric(server, "sandbox_storage_unavailable_total", reason) == before + 1
    health = httpx.get(f"{server.url}/health", timeout=5)
    assert health.status_code == 503
    assert health.json()["status"] == "unhealthy" and reason in health.json()["reason"]
    assert health.json()["storage"]["reason"] == reason


def assert_accepting(server: RunningServer) -> None:
    accepted = post(
        server, f"exec_{uuid.uuid4().hex[:16]}", "def handler(event):\n    return 1\n", wait="true"
    )
    assert accepted.status_code == 200 and accepted.json()["return_value"] == 1, accepted.text
    assert httpx.get(f"{server.url}/health", timeout=5).json()["status"] == "healthy"


@pytest.fixture
def small_results_fs(base_dir: Path) -> Iterator[Path]:
    if not IS_ROOT:
        pytest.skip("mounting a tmpfs needs root")
    results = base_dir / "results"
    results.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0755", "tmpfs", str(results)], check=True)
    yield results
    subprocess.run(["umount", "-l", str(results)], check=False)


def test_a_full_results_dir_refuses_acceptance_until_space_returns(
    small_results_fs: Path, base_dir: Path, servers: list[RunningServer]
) -> None:
    # Room for an acceptance = room for its largest result (2 x 1 MiB of output, 1 MiB of
    # return value, 1 MiB of slack).
    env = {"MAX_OUTPUT_BYTES": str(1 << 20), "MAX_RETURN_VALUE_BYTES": str(1 << 20)}
    server = launch(servers, base_dir, env)
    assert_accepting(server)
    filler = small_results_fs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(fd, b"\0" * (1 << 16)):
            pass
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    assert_refused(server, "full")
    filler.unlink()
    assert_accepting(server)


@pytest.mark.skipif(not IS_ROOT, reason="starting an unprivileged daemon needs root")
def test_a_results_dir_the_daemon_may_not_write_refuses_until_it_may(
    base_dir: Path, servers: list[RunningServer]
) -> None:
    server = launch(servers, base_dir, {}, run_as=(65534, 65534))
    assert_accepting(server)
    server.results_dir.chmod(0o500)
    try:
        assert_refused(server, "not_writable")
    finally:
        server.results_dir.chmod(0o755)
    assert_accepting(server)
