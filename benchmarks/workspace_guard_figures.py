"""How far a run can write past MAX_WORKSPACE_WRITE_MB before the guard reports it.

    .venv/bin/python -m benchmarks.workspace_guard_figures [trials]      (root: mounts a tmpfs)

A writer appends 1 MiB chunks to a file in a tmpfs workspace as fast as it can (tmpfs is
the fastest a workspace gets: no disk behind it); on the report it is SIGKILLed at once,
as the daemon does. Overshoot = allocated size of its file - the cap. Also: the cost of
one statvfs probe and of one confirming scan of a 1000-file workspace.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from sandbox_executor.poller import Poller
from sandbox_executor.workspace_guard import WorkspaceGuard, WriteBreach, scan_changes

MIB = 1 << 20
WRITER = (
    "import os, sys\n"
    "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644)\n"
    "chunk = b'\\1' * (1 << 20)\n"
    "while True:\n    os.write(fd, chunk)\n"
)


def overshoot(workspace: Path, cap: int) -> tuple[float, float, str]:
    """(MiB past the cap at the kill, write speed MiB/s, the guard's mode)."""
    poller = Poller()
    guard = WorkspaceGuard(workspace, cap, poller)
    target = workspace / "out.bin"  # beside whatever the workspace holds
    proc = subprocess.Popen(["/usr/bin/python3", "-I", "-S", "-c", WRITER, str(target)])
    done = threading.Event()

    def stop(_breach: WriteBreach) -> None:
        os.kill(proc.pid, signal.SIGKILL)
        done.set()

    began = time.monotonic()
    watch = guard.watch(stop)
    done.wait(60)
    elapsed = time.monotonic() - began
    proc.wait()
    watch.stop()
    poller.close()
    written = target.stat().st_blocks * 512
    target.unlink()
    return (written - cap) / MIB, written / MIB / elapsed, guard.mode


def main() -> None:
    trials = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    mount = Path(tempfile.mkdtemp(prefix="wsg-"))
    mounted = os.geteuid() == 0
    if mounted:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2g", "tmpfs", str(mount)], check=True)
    try:
        times = []
        for _ in range(2000):
            t = time.perf_counter()
            os.statvfs(mount)
            times.append(time.perf_counter() - t)
        print(f"statvfs probe: median {statistics.median(times) * 1e6:.1f} us")
        shared = mount / "workspace"  # a directory of a shared filesystem, 1000 files in it
        for i in range(1000):
            (shared / f"f{i % 50}").mkdir(parents=True, exist_ok=True)
            (shared / f"f{i % 50}" / f"{i}.txt").write_bytes(b"x" * 100)
        scans = [scan_changes(shared, 0, None, 20_000).seconds for _ in range(20)]
        print(f"confirming scan, 1050 entries: median {statistics.median(scans) * 1e3:.2f} ms")
        for workspace in (mount, shared):
            for cap_mib in (64, 1024):
                results = [overshoot(workspace, cap_mib * MIB) for _ in range(trials)]
                over = [r[0] for r in results]
                speed = statistics.median(r[1] for r in results)
                print(
                    f"{results[0][2]:13s} cap {cap_mib} MiB: overshoot median {statistics.median(over):.0f}"
                    f" MiB, max {max(over):.0f} MiB (writer ~{speed:.0f} MiB/s)"
                )
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(mount)], check=False)
        os.rmdir(mount)


if __name__ == "__main__":
    main()
