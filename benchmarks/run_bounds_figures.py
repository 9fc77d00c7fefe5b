"""Figures for docs: the watchdog's overshoot and sample cost, the cgroup kill time.

    .venv/bin/python -m benchmarks.run_bounds_figures [trials]

Overshoot: a process touching fresh memory as fast as it can (huge pages, about 1.6-1.9
GiB/s on one core here) under a 256 MiB limit; what it really held when the SIGKILL
landed, read from a counter it keeps in a shared file, minus the limit. Sample cost: one watchdog
tick (process-table refresh + memory of every member) for a run of 4 processes.
"""

from __future__ import annotations

import os
import statistics
import struct
import sys
import tempfile
import time

from sandbox_executor.poller import Poller
from sandbox_executor.run_bounds import Limits, detect_bounds
from sandbox_executor.run_bounds.watchdog import Watchdog, WatchdogRun
from tests.support import bounds_jobs as jobs
from tests.support.spawn_like import reap, spawn, wait_exit

MIB = 1 << 20
LIMIT = 256 * MIB


def overshoot_once(mechanism: str) -> tuple[float, float]:
    """(MiB touched beyond the limit at death, MiB the bounds' peak says)."""
    poller = Poller()
    provider = detect_bounds(poller, mechanism)  # type: ignore[arg-type]
    fd, counter = tempfile.mkstemp(dir="/dev/shm")
    os.write(fd, b"\0" * 16)
    os.close(fd)
    run = provider.create(Limits(LIMIT, 64))
    pid = spawn(jobs.python(jobs.GREEDY, counter), run.join_paths)
    try:
        run.start(pid)
        status = wait_exit(pid, 30)
        if status is None or not os.WIFSIGNALED(status):
            raise RuntimeError(f"not stopped by its bounds: {status}")
        with open(counter, "rb") as fh:
            mib, base = struct.unpack("qq", fh.read(16))
        report = run.report()
        run.close()
        # At death it held its start-up memory, the MiB it counted, its 1 MiB source
        # block and at most 1 MiB being copied.
        return base / MIB + mib + 2 - LIMIT / MIB, (report.peak_bytes or 0) / MIB
    finally:
        reap(pid)
        os.unlink(counter)
        provider.close()
        poller.close()


def sample_cost(ticks: int = 300) -> list[float]:
    poller = Poller()
    watchdog = Watchdog(poller, min_interval=3600, max_interval=3600)
    run = WatchdogRun(Limits(8 << 30, 64), watchdog)
    with jobs.pipe() as out:
        pid = spawn(jobs.python(jobs.POOL.format(workers=3, mb=1, hold=60)), (), stdout=out.w)
        time.sleep(1.0)  # the pool's 3 workers are up: 4 processes
        run.start(pid)
        costs = []
        for _ in range(ticks):
            began = time.perf_counter()
            watchdog.tick(all_due=True)
            costs.append(time.perf_counter() - began)
        members = len(run.members)
        run.close()
        reap(pid)
    poller.close()
    print(
        f"sample cost, {members}-process run: median {statistics.median(costs) * 1e3:.3f} ms, "
        f"p95 {sorted(costs)[int(len(costs) * 0.95)] * 1e3:.3f} ms"
    )
    return costs


def main() -> None:
    trials = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    sample_cost()
    mechanisms = ["watchdog"] + (["cgroup_v1"] if os.geteuid() == 0 else [])
    for mechanism in mechanisms:
        results = [overshoot_once(mechanism) for _ in range(trials)]
        over = [r[0] for r in results]
        peak = statistics.median(r[1] for r in results)
        print(
            f"{mechanism}: held beyond 256 MiB at death: median {statistics.median(over):.0f} MiB, "
            f"max {max(over):.0f} MiB; reported peak median {peak:.0f} MiB"
        )


if __name__ == "__main__":
    main()
