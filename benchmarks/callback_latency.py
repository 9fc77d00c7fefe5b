"""Reporting latency: end of run (submit_result) -> the result request reaches the control plane.

Runs the real ControlPlaneReporter (durable outbox on disk: write + fsync + rename + dir
fsync) against the real fake control plane (HTTP/1.1 on loopback, in a thread of this
process), one result at a time with a pause between them, like executions ending.

Prints median / p95 / max of:
* commit: how long submit_result takes (the durable write the caller waits for);
* arrival: submit_result called -> request fully received by the control plane (the
  target: p95 < 200 ms).

With --daemon: the real `sandbox-executor serve` runs a Python handler that returns
time.time() as its last act; "end2cp" is the control plane's arrival time minus that stamp
(end of user code -> result received), sandbox teardown and artifact scan included.

Usage: .venv/bin/python benchmarks/callback_latency.py [--count 300] [--stdout-kib 4]
       .venv/bin/python benchmarks/callback_latency.py --daemon --count 100
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "src"))

import structlog  # noqa: E402

from sandbox_executor.config import Settings  # noqa: E402
from sandbox_executor.control_plane import ControlPlaneReporter  # noqa: E402
from sandbox_executor.models import ExecutionResult, Metrics  # noqa: E402
from tests.support.fake_control_plane import FakeControlPlane  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(name: str, values_s: list[float]) -> str:
    ms = [v * 1000 for v in values_s]
    return (
        f"{name:<8} n={len(ms)}  median={statistics.median(ms):7.2f} ms  "
        f"p95={pct(ms, 0.95):7.2f} ms  max={max(ms):7.2f} ms"
    )


async def run(count: int, stdout_kib: int, gap: float, results_dir: Path) -> None:
    with FakeControlPlane() as cp:
        settings = Settings(results_dir=results_dir, control_plane_url=cp.url)
        reporter = ControlPlaneReporter(settings)
        await reporter.start()
        result = ExecutionResult(
            status="success",
            exit_code=0,
            stdout="x" * (stdout_kib * 1024),
            stderr="",
            execution_time=0.05,
            metrics=Metrics(duration_ms=50.0),
            termination_reason="exited",
        )
        submitted: dict[str, float] = {}
        commit: list[float] = []
        for i in range(count):
            eid = f"exec_bench_{i:06d}"
            started = time.time()
            submitted[eid] = started
            await reporter.submit_result(eid, "bench", result)
            commit.append(time.time() - started)
            await asyncio.sleep(gap)
        await asyncio.to_thread(cp.wait_for, "result", count, timeout=30)
        await reporter.flush(5)
        await reporter.aclose()
        arrivals = {r.execution_id: r.arrived_at for r in cp.requests("result")}
        arrival = [arrivals[eid] - t for eid, t in submitted.items()]
        statuses = {r.status for r in cp.requests("result")}
    print(f"results={count} stdout={stdout_kib} KiB gap={gap * 1000:.0f} ms dir={results_dir}")
    print(summary("commit", commit))
    print(summary("arrival", arrival))
    print(f"answers: {sorted(s for s in statuses if s is not None)}  stats: {reporter.stats()}")


END_STAMP_HANDLER = """
import time

def handler(event):
    return {"ended_at": time.time()}
"""


def run_daemon(count: int) -> None:
    """End to end: the handler's last instruction -> the result reaches the control plane."""
    import httpx

    from tests.support.server import start_server, stop_server

    with FakeControlPlane() as cp:
        server = start_server({"CONTROL_PLANE_URL": cp.url, "LOG_LEVEL": "WARNING"})
        try:
            latencies: list[float] = []
            with httpx.Client(base_url=server.url, timeout=30) as client:
                for i in range(count):
                    eid = f"exec_bench_e2e_{i:06d}"
                    response = client.post(
                        "/execute",
                        json={
                            "execution_id": eid,
                            "code": END_STAMP_HANDLER,
                            "language": "python",
                        },
                    )
                    assert response.status_code == 200, response.text
                    [request] = cp.wait_for("result", execution_id=eid, timeout=30)
                    body = request.json
                    assert body["status"] == "success", body
                    latencies.append(request.arrived_at - body["return_value"]["ended_at"])
        finally:
            stop_server(server)
    print(f"daemon end to end: {count} executions (python handler, real bwrap sandbox)")
    print(summary("end2cp", latencies))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--stdout-kib", type=int, default=4)
    parser.add_argument("--gap-ms", type=float, default=10)
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=None,
        help="default: a fresh directory under /var/tmp (a real disk)",
    )
    parser.add_argument(
        "--daemon", action="store_true", help="measure end to end through a real `sandbox-executor serve`"
    )
    args = parser.parse_args()
    if args.daemon:
        run_daemon(args.count)
        return
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    with tempfile.TemporaryDirectory(prefix="cb-bench-", dir="/var/tmp") as tmp:
        results_dir = args.results_dir or Path(tmp)
        asyncio.run(run(args.count, args.stdout_kib, args.gap_ms / 1000, results_dir))


if __name__ == "__main__":
    main()
