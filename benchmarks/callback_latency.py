"""Reporting latency: end of run (submit_result) -> the result request reaches the control plane.

Runs the real ControlPlaneReporter (durable outbox on disk: write + fsync + rename + dir
fsync) against the real fake control plane (HTTP/1.1 on loopback, in a thread of this
process), one result at a time with a pause between them, like executions ending.

Prints median / p95 / max of:
* commit: how long submit_result takes (the durable write the caller waits for);
* arrival: submit_result called -> request fully received by the control plane (issue 4
  target: p95 < 200 ms).

Usage: .venv/bin/python benchmarks/callback_latency.py [--count 300] [--stdout-kib 4]
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
            status="success", exit_code=0, stdout="x" * (stdout_kib * 1024), stderr="",
            execution_time=0.05, metrics=Metrics(duration_ms=50.0), termination_reason="exited",
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--stdout-kib", type=int, default=4)
    parser.add_argument("--gap-ms", type=float, default=10)
    parser.add_argument("--results-dir", type=Path, default=None,
                        help="default: a fresh directory under /var/tmp (a real disk)")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    with tempfile.TemporaryDirectory(prefix="cb-bench-", dir="/var/tmp") as tmp:
        results_dir = args.results_dir or Path(tmp)
        asyncio.run(run(args.count, args.stdout_kib, args.gap_ms / 1000, results_dir))


if __name__ == "__main__":
    main()
