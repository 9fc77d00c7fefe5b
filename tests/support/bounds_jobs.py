"""Child programs for the run-bounds tests, and a way to read what they print."""

from __future__ import annotations

import os
import select
import time
from collections.abc import Iterator
from contextlib import contextmanager

MIB = 1024 * 1024

# N worker processes each touching MB MiB and holding it: the whole run needs N x MB.
POOL = """
import multiprocessing as mp, time
def touch(mb):
    block = b"\\1" * (mb << 20)
    time.sleep({hold})
    return len(block)
if __name__ == "__main__":
    with mp.Pool({workers}) as pool:
        print(sum(pool.map(touch, [{mb}] * {workers})), flush=True)
"""

# Forks sleepers until the kernel refuses, then says how many it made.
FORK_BOMB = """
import os, time
made = 0
try:
    while True:
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
        made += 1
except BlockingIOError:
    print("EAGAIN", made, flush=True)
time.sleep(60)
"""

# Three daemonized (setsid + double fork) sleepers that print their pids.
DAEMONS = """
import os, time
for _ in range(3):
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            print(os.getpid(), flush=True)
            time.sleep(60)
        os._exit(0)
    os.wait()
time.sleep(60)
"""

# Touches fresh memory as fast as it can (huge pages where the kernel gives them: about
# 1.6-1.9 GiB/s on one core of the reference host) and keeps, in a shared 16-byte file,
# its resident memory before it began and how many MiB it has touched since: after a
# SIGKILL the file says how far it really got.
GREEDY = """
import mmap, sys, struct
shared = open(sys.argv[1], "r+b")
counter = mmap.mmap(shared.fileno(), 16)
status = open("/proc/self/status").read().split("\\n")
base = sum(int(l.split()[1]) * 1024 for l in status if l.startswith(("RssAnon:", "RssShmem:")))
counter[8:16] = struct.pack("q", base)
big = mmap.mmap(-1, 2 << 30)
big.madvise(mmap.MADV_HUGEPAGE)
chunk = b"\\1" * (1 << 20)
for i in range(2 << 10):
    big[i << 20 : (i + 1) << 20] = chunk
    counter[:8] = struct.pack("q", i + 1)
"""

OOM_SCORE = "print(open('/proc/self/oom_score_adj').read().strip(), flush=True)"


PYTHON = "/usr/bin/python3"


def python(code: str, *args: str) -> list[str]:
    return [PYTHON, "-I", "-S", "-c", code, *args]


class Pipe:
    """A pipe for a child's stdout, read line by line with a deadline."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        self.lines: list[str] = []
        self._buf = b""

    def close_writer(self) -> None:
        if self.w >= 0:
            os.close(self.w)
            self.w = -1

    def close(self) -> None:
        self.close_writer()
        os.close(self.r)

    def read_lines(self, count: int, timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        while len(self.lines) < count and time.monotonic() < deadline:
            ready, _, _ = select.select([self.r], [], [], 0.05)
            if ready:
                chunk = os.read(self.r, 4096)
                if not chunk:
                    break
                self._buf += chunk
                *done, self._buf = self._buf.split(b"\n")
                self.lines.extend(line.decode() for line in done)
        return self.lines


@contextmanager
def pipe() -> Iterator[Pipe]:
    p = Pipe()
    try:
        yield p
    finally:
        p.close()
