"""What one durable acceptance costs: the journal as built, and the designs it beat.

    .venv/bin/python -m benchmarks.journal_cost DIR [DIR...]     (e.g. var /dev/shm)

Each figure is the median and p95 of N calls in ms; "accept()" is the whole call the
request path makes (validation, statvfs + access checks, encode, pwrite, fdatasync).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from sandbox_executor.journal import Journal

N = 500
RECORD = (
    json.dumps({"e": "a", "id": "exec_20250101000000_deadbeef", "s": "sess-1", "l": "python", "t": 30}) + "\n"
).encode()


def figures(samples: list[float]) -> str:
    samples = sorted(samples)
    p95 = samples[int(len(samples) * 0.95)]
    return f"median {statistics.median(samples) * 1e3:.3f} ms, p95 {p95 * 1e3:.3f} ms"


def timed(step: Callable[[int], None]) -> list[float]:
    out = []
    for i in range(N):
        began = time.perf_counter()
        step(i)
        out.append(time.perf_counter() - began)
    return out


def journal_accept(root: Path) -> list[float]:
    journal = Journal.open(root)
    try:
        return timed(lambda i: journal.accept(f"exec_{i:08d}", "sess-1", "python", 30))
    finally:
        journal.close()


def append_fdatasync(root: Path) -> list[float]:
    fd = os.open(root / "append", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:

        def step(_i: int) -> None:
            os.write(fd, RECORD)
            os.fdatasync(fd)

        return timed(step)
    finally:
        os.close(fd)


def file_per_execution(root: Path) -> list[float]:
    directory = root / "per-exec"
    directory.mkdir()
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)

    def step(i: int) -> None:
        fd = os.open(f"{i}.tmp", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=dfd)
        os.write(fd, RECORD)
        os.fsync(fd)
        os.close(fd)
        os.rename(f"{i}.tmp", str(i), src_dir_fd=dfd, dst_dir_fd=dfd)
        os.fsync(dfd)

    try:
        return timed(step)
    finally:
        os.close(dfd)


def main() -> None:
    for target in sys.argv[1:] or ["var", "/dev/shm"]:
        Path(target).mkdir(parents=True, exist_ok=True)
        for name, bench in (
            ("Journal.accept (pre-zeroed, pwrite + fdatasync)", journal_accept),
            ("append + fdatasync", append_fdatasync),
            ("file per execution + fsync + dir fsync", file_per_execution),
        ):
            with tempfile.TemporaryDirectory(dir=target) as tmp:
                print(f"{target:10s} {name:50s} {figures(bench(Path(tmp)))}")


if __name__ == "__main__":
    main()
