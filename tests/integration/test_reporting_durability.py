"""A process that committed a result and was SIGKILLed before delivery loses nothing.

The reporter runs in a real subprocess that is killed with SIGKILL (no cleanup of any kind)
after ``submit_result`` returned; a new reporter on the same RESULTS_DIR delivers the result.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox_executor.config import Settings
from sandbox_executor.control_plane import ControlPlaneReporter, DeliveryStats
from tests.support.fake_control_plane import FakeControlPlane

EID = "exec_20260101120000_deadbeef"

CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from sandbox_executor.config import Settings
    from sandbox_executor.control_plane import ControlPlaneReporter
    from sandbox_executor.models import ExecutionResult, Metrics

    async def main() -> None:
        settings = Settings(
            results_dir=sys.argv[1], control_plane_url=sys.argv[2],
            callback_timeout_seconds=30, callback_max_backoff_seconds=30,
        )
        reporter = ControlPlaneReporter(settings)
        await reporter.start()
        result = ExecutionResult(
            status="failed", exit_code=3, stdout="partial output", stderr="boom",
            execution_time=1.5, metrics=Metrics(duration_ms=1500.0),
            termination_reason="exited",
        )
        await reporter.submit_result(sys.argv[3], "sess-kill", result)
        print("SUBMITTED", flush=True)
        await asyncio.sleep(60)

    asyncio.run(main())
    """
)


@pytest.fixture
def cp() -> Iterator[FakeControlPlane]:
    with FakeControlPlane() as fake:
        yield fake


@pytest.mark.parametrize("outage", ["refused", "hung"])
def test_sigkill_before_delivery_then_new_process_delivers(
    cp: FakeControlPlane, tmp_path: Path, outage: str
) -> None:
    results = tmp_path / "results"
    url = cp.url
    if outage == "refused":
        cp.stop()
    else:
        cp.hang(60, kind="result")
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(results), url, EID],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "LOG_LEVEL": "WARNING"},
    )
    try:
        assert child.stdout is not None
        # structlog's default output shares stdout; skip its lines.
        lines = iter(child.stdout.readline, b"")
        assert any(line.strip() == b"SUBMITTED" for line in lines)
        if outage == "hung":
            cp.wait_for("result", timeout=5)  # the delivery is in flight, unanswered
        child.send_signal(signal.SIGKILL)
        assert child.wait(5) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    pending = list((results / "outbox").glob("*.json"))
    assert [p.name for p in pending] == [f"{EID}.json"]

    cp.stop()  # drops the hung connection too
    cp.clear_rules()
    cp.start()

    async def restart() -> None:
        reporter = ControlPlaneReporter(
            Settings(results_dir=results, control_plane_url=url, callback_max_backoff_seconds=0.05)
        )
        await reporter.start()
        try:
            await asyncio.to_thread(cp.wait_for, "result", 1, status=201, timeout=5)
            await reporter.flush(1)
            assert reporter.stats() == DeliveryStats(pending=0, undeliverable=0, delivered=1)
        finally:
            await reporter.aclose()

    asyncio.run(restart())
    delivered = [r for r in cp.requests("result") if r.status == 201]
    assert len(delivered) == 1
    body = delivered[0].json
    assert body["status"] == "failed" and body["exit_code"] == 3
    assert body["stdout"] == "partial output" and body["metrics"]["duration_ms"] == 1500.0
    assert delivered[0].header("Idempotency-Key") == EID
    assert cp.accepted_results()[EID] == body
    assert not list((results / "outbox").glob("*.json"))
    assert json.loads(json.dumps(body)) == body
