"""Whole-run bounds through the real daemon: memory over all of a run's processes, the
OOM killer's preference, and the workspace write cap.

Every scenario runs at each memory mechanism this host offers (cgroup v2 where a writable
v2 tree exists, cgroup v1 as root, the watchdog when forced), cold or, in the warm pass of
`make test` (SANDBOX_TEST_WARM_POOL=1), in sandboxes pre-started inside their run's bounds.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbox_executor.poller import Poller
from sandbox_executor.run_bounds import BoundsUnavailable, MechanismChoice, detect_bounds
from tests.integration.conftest import processes_with
from tests.support.server import RunningServer, running_server, start_server, stop_server

IS_ROOT = os.geteuid() == 0
MIB = 1024 * 1024
LIMIT_MB = 256
WRITE_CAP_MB = 16

POOL = """
import multiprocessing, time

def touch(mb):
    block = bytearray(mb << 20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    time.sleep(0.3)  # held long enough for a sampling watchdog to see all four at once
    return len(block) >> 20

def handler(event):
    with multiprocessing.Pool(4) as pool:
        return sum(pool.map(touch, [event["mb"]] * 4))
"""

WRITER = """
def handler(event):
    with open("kept.txt", "w") as fh:
        fh.write("written before the flood")
    chunk = b"x" * (1 << 20)
    with open("flood.bin", "wb") as fh:
        for _ in range(event["mb"]):
            fh.write(chunk)
            fh.flush()
    return "wrote it all"
"""


def unavailable(mechanism: MechanismChoice) -> str | None:
    """Why the daemon could not use ``mechanism`` on this host (it runs where we do)."""
    poller = Poller()
    try:
        detect_bounds(poller, mechanism).close()
    except BoundsUnavailable as exc:
        return exc.description
    finally:
        poller.close()
    return None


def daemon_env(mechanism: str, **extra: str) -> dict[str, str]:
    return {
        "MEMORY_LIMIT_MB": str(LIMIT_MB),
        "RUN_BOUNDS_MECHANISM": mechanism,
        "MAX_WORKSPACE_WRITE_MB": str(WRITE_CAP_MB),
        **extra,
    }


@pytest.fixture(scope="module", params=["cgroup_v2", "cgroup_v1", "watchdog"])
def daemon(request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    why = unavailable(request.param)
    if why is not None:
        pytest.skip(f"{request.param} unavailable here: {why}")
    server = start_server(daemon_env(request.param))
    yield server
    stop_server(server)


def run(server: RunningServer, code: str, event: dict[str, Any], timeout: int = 20) -> dict[str, Any]:
    body = {"execution_id": f"exec_{uuid.uuid4().hex[:16]}", "language": "python", "code": code}
    response = httpx.post(
        f"{server.url}/execute?wait=true", json={**body, "event": event, "timeout": timeout}, timeout=60
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def assert_stopped_for_memory(server: RunningServer, result: dict[str, Any]) -> None:
    assert result["status"] == "failed", result
    assert result["termination_reason"] == "memory_limit", result
    line = f"Memory limit exceeded: the run used more than {LIMIT_MB} MiB in total across its processes"
    assert line in result["stderr"] and line in result["error"], result["stderr"]
    # Killed long before its 20 s timeout, and the daemon is fine.
    assert result["execution_time"] < 10
    assert httpx.get(f"{server.url}/health", timeout=5).json()["status"] == "healthy"


def test_health_names_the_mechanism(daemon: RunningServer) -> None:
    health = httpx.get(f"{daemon.url}/health", timeout=5).json()
    assert health["memory_bounds"]["mechanism"] == daemon.env["RUN_BOUNDS_MECHANISM"]
    assert health["memory_bounds"]["detail"]
    assert health["workspace_writes"]["mode"] in ("statvfs", "statvfs_scan", "scan")


def test_four_processes_over_the_limit_together_are_stopped_for_memory(daemon: RunningServer) -> None:
    # Each worker stays far under the per-process rlimit (256 MiB); together they need 800.
    result = run(daemon, POOL, {"mb": 200})
    assert_stopped_for_memory(daemon, result)
    peak = result["metrics"]["peak_memory_mb"]
    if daemon.env["RUN_BOUNDS_MECHANISM"] == "watchdog":
        # What the stopped tree held: four writers on two cores grow GiB/s between two
        # samples (benchmarks/run.py measures how far; 96 MiB is twice the documented bound).
        assert LIMIT_MB < peak < LIMIT_MB + 96, peak
    else:
        assert LIMIT_MB * 0.75 < peak <= LIMIT_MB + 1, peak


def test_four_processes_under_the_limit_succeed_with_the_whole_runs_peak(daemon: RunningServer) -> None:
    result = run(daemon, POOL, {"mb": 50})
    assert result["status"] == "success", result
    assert result["return_value"] == 200
    # The four workers together (4 x 50 MiB), not the largest one of them.
    peak = result["metrics"]["peak_memory_mb"]
    assert 195 <= peak <= LIMIT_MB, peak


FORKED_READERS = """
import os, time

def handler(event):
    data = b"x" * (150 << 20)
    readers = []
    for _ in range(3):
        pid = os.fork()
        if pid == 0:
            time.sleep(0.5)  # holds the parent's 150 MiB, shared copy-on-write
            os._exit(0)
        readers.append(pid)
    for pid in readers:
        os.waitpid(pid, 0)
    return len(data) >> 20
"""


def test_pages_a_fork_shares_count_once(daemon: RunningServer) -> None:
    # Four processes each map 150 MiB (600 MiB summed per process), but it is one copy.
    result = run(daemon, FORKED_READERS, {})
    assert result["status"] == "success", result["stderr"][-500:]
    assert 150 <= result["metrics"]["peak_memory_mb"] < LIMIT_MB, result["metrics"]


def test_a_run_writing_past_the_workspace_cap_is_stopped_and_keeps_its_files(daemon: RunningServer) -> None:
    result = run(daemon, WRITER, {"mb": 400})
    assert result["status"] == "failed", result
    assert result["termination_reason"] == "disk_limit", result
    assert "workspace write limit reached" in result["stderr"], result["stderr"]
    assert f"limit {WRITE_CAP_MB} MiB, MAX_WORKSPACE_WRITE_MB" in result["error"]
    flood = daemon.workspace / "flood.bin"
    # Stopped near the cap (the overshoot is its write speed x a few ms), far from 400 MiB.
    assert WRITE_CAP_MB * MIB < flood.stat().st_size < 200 * MIB
    assert (daemon.workspace / "kept.txt").read_text() == "written before the flood"
    assert {"kept.txt", "flood.bin"} <= set(result["artifacts"])
    flood.unlink()
    (daemon.workspace / "kept.txt").unlink()


async def test_a_run_done_between_two_probes_is_still_held_to_the_cap(
    run_code: Any, make_settings: Any, workspace: Path
) -> None:
    # Far from a 1 GiB cap the probes are 250 ms apart; fallocate takes 1.2 GiB of blocks
    # in a few milliseconds and the run is over: the last look at its end still counts.
    code = (
        "import os\n"
        "def handler(event):\n"
        "    for name in ('burst1.bin', 'burst2.bin'):\n"
        "        fd = os.open(name, os.O_WRONLY | os.O_CREAT)\n"
        "        os.posix_fallocate(fd, 0, 600 << 20)\n"
        "    return 'done'\n"
    )
    result = await run_code(code, settings=make_settings(max_workspace_write_mb=1024))
    assert result.status == "failed", result
    assert result.termination_reason == "disk_limit", result
    assert {"burst1.bin", "burst2.bin"} <= set(result.artifacts)
    assert "workspace write limit reached" in result.stderr


def _children(pid: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        try:
            stat = Path(f"/proc/{name}/stat").read_bytes()
        except OSError:
            continue
        if name.isdigit() and int(stat[stat.rfind(b")") + 2 :].split()[1]) == pid:
            found.append(int(name))
    return found


def _oom_score_adj(pid: int) -> int:
    return int(Path(f"/proc/{pid}/oom_score_adj").read_text())


def test_every_sandbox_process_is_the_oom_killers_first_choice(daemon: RunningServer) -> None:
    marker = "sbxoom" + uuid.uuid4().hex[:10]
    code = f"""
import os, subprocess, sys, time
def handler(event):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", {marker!r}])
    while not os.path.exists("release-{marker}"):
        time.sleep(0.02)
    child.kill()
"""
    eid = f"exec_{uuid.uuid4().hex[:16]}"
    with daemon.client() as client:
        accepted = client.post("/execute", json={"execution_id": eid, "language": "python", "code": code})
        assert accepted.status_code == 200
        try:
            deadline = time.monotonic() + 15
            while not (marked := processes_with(marker)) and time.monotonic() < deadline:
                time.sleep(0.02)
            assert marked, "the sandboxed child never showed up"
            # Read from the host: the sandbox's processes, bwrap included, all at 1000...
            [spawner] = [p for p in _children(daemon.process.pid) if b"spawner_main" in _cmdline(p)]
            sandbox = _tree(spawner)
            assert marked[0] in sandbox
            assert {p: _oom_score_adj(p) for p in sandbox} == dict.fromkeys(sandbox, 1000)
            # ...while the daemon and its spawner keep what they were started with.
            ours = _oom_score_adj(os.getpid())
            assert _oom_score_adj(daemon.process.pid) == ours and _oom_score_adj(spawner) == ours
        finally:
            (daemon.workspace / f"release-{marker}").touch()
        deadline = time.monotonic() + 15
        while client.get(f"/executions/{eid}").json()["status"] in ("queued", "running"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        (daemon.workspace / f"release-{marker}").unlink()


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _tree(root: int) -> list[int]:
    """Everything below ``root`` (not ``root`` itself)."""
    found, queue = [], [root]
    while queue:
        for child in _children(queue.pop()):
            found.append(child)
            queue.append(child)
    return found


def test_a_named_mechanism_that_cannot_work_stops_the_start_up() -> None:
    missing = next((m for m in ("cgroup_v2", "cgroup_v1") if unavailable(m)), None)  # type: ignore[arg-type]
    if missing is None:
        pytest.skip("every mechanism works here")
    with pytest.raises(RuntimeError, match="memory_bounds") as failed:
        start_server({"RUN_BOUNDS_MECHANISM": missing})
    assert "remedy: set RUN_BOUNDS_MECHANISM=auto" in str(failed.value)


@pytest.mark.skipif(not IS_ROOT, reason="starting an unprivileged daemon needs root")
def test_an_unprivileged_daemon_bounds_runs_with_the_watchdog() -> None:
    # Where the daemon cannot write any cgroup (uid 65534 here, uid 1000 in the control
    # plane's containers), auto picks the watchdog: the same bounds, by sampling.
    with running_server(daemon_env("auto"), run_as=(65534, 65534)) as server:
        health = httpx.get(f"{server.url}/health", timeout=5).json()
        assert health["memory_bounds"]["mechanism"] == "watchdog", health
        assert_stopped_for_memory(server, run(server, POOL, {"mb": 200}))


def _memory_cgroup() -> Path | None:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            directory = Path("/sys/fs/cgroup/memory") / path.lstrip("/")
            return directory if directory.is_dir() else None
    return None


@pytest.fixture
def tight_cgroup() -> Iterator[Path]:
    """A v1 memory cgroup of 320 MiB (no swap) below ours, for a daemon to run in."""
    own = _memory_cgroup()
    if not IS_ROOT or own is None:
        pytest.skip("needs root and a cgroup v1 memory hierarchy")
    directory = own / f"oom-test-{uuid.uuid4().hex[:8]}"
    directory.mkdir()
    (directory / "memory.limit_in_bytes").write_text(str(320 * MIB))
    yield directory
    deadline = time.monotonic() + 5
    while True:
        try:
            directory.rmdir()
            break
        except OSError:
            assert time.monotonic() < deadline, "the test cgroup stayed busy"
            time.sleep(0.05)


def test_a_kernel_oom_kill_of_user_code_is_reported_as_memory_limit(tight_cgroup: Path) -> None:
    # The host runs short of memory before any limit of ours is reached (the run may use
    # 2 GiB, its container 320 MiB): the kernel's OOM killer picks the sandbox (1000), never
    # the daemon, and the daemon reports it as memory_limit.
    env = daemon_env("watchdog", MEMORY_LIMIT_MB="2048", WARM_POOL_SIZE="0")
    server = start_server(env)
    try:
        # The spawner starts with the first run, so it and every sandbox are born in here.
        (tight_cgroup / "cgroup.procs").write_text(str(server.process.pid))
        hog = "def handler(event):\n    hog = []\n    while True:\n        hog.append(bytearray(32 << 20))\n"
        result = run(server, hog, {})
        assert result["status"] == "failed", result
        assert result["termination_reason"] == "memory_limit", result
        assert "OOM killer" in result["stderr"], result["stderr"]
        assert server.process.poll() is None
        assert run(server, "def handler(event):\n    return 'alive'\n", {})["return_value"] == "alive"
    finally:
        stop_server(server)
