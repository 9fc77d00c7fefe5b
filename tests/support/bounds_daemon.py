"""A stand-in daemon for the sweep test: it creates a run, starts a sandbox-like sleeper
in it, prints ``READY <sleeper pid> <start> <cgroup dir>...`` and waits to be SIGKILLed.

Run as ``python -m tests.support.bounds_daemon <mechanism>`` from the repository root.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from sandbox_executor.poller import Poller
from sandbox_executor.run_bounds import Limits, detect_bounds
from tests.support.bounds_jobs import python
from tests.support.spawn_like import spawn


def main() -> None:
    provider = detect_bounds(Poller(), sys.argv[1])  # type: ignore[arg-type]
    run = provider.create(Limits(64 << 20, 32))
    pid = spawn(python("import time; time.sleep(120)"), run.join_paths)
    run.start(pid)
    start = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[19].decode()
    dirs = " ".join(str(Path(p).parent) for p in run.join_paths)
    print("READY", pid, start, dirs, flush=True)
    while True:
        time.sleep(60)


if __name__ == "__main__":
    os.environ.pop("PYTHONSAFEPATH", None)
    main()
