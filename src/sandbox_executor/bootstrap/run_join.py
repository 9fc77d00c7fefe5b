"""What the forked sandbox child does before exec to fall under its run's bounds.

Standard library only and no package imports: the spawner runs ``python3 -I -S`` and may
paste this file's source into its own. Call order in the child, after ``setsid()`` and
BEFORE dropping privileges (v1 cgroup files belong to root; a delegated v2 tree to the
daemon's uid):

    join_cgroups(request["cgroup_procs"])   # run.join_paths; empty for the watchdog
    raise_oom_score()                        # 1000: user code is the OOM killer's first pick

Everything the child then execs (bwrap, the interpreter, whatever user code forks)
inherits both. The daemon and the spawner keep their own cgroup and oom_score_adj.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

OOM_SCORE_ADJ_MAX = 1000


def join_cgroups(procs_files: Iterable[str]) -> None:
    """Move the calling process into each cgroup whose ``cgroup.procs`` path is given.

    Raises OSError if one refuses: a sandbox outside its cgroup would run unbounded, so the
    spawn must fail rather than go on.
    """
    for path in procs_files:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, b"0")  # "0" = the writing process
        finally:
            os.close(fd)


def raise_oom_score(value: int = OOM_SCORE_ADJ_MAX) -> None:
    """Set /proc/self/oom_score_adj (raising it needs no privilege; lowering would)."""
    fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, str(value).encode())
    finally:
        os.close(fd)
