"""What the forked sandbox child does before exec to fall under its run's bounds.

Standard library only, nothing of ours imported: the spawner (``python3 -I -S``) loads it
as plain ``run_join`` with this directory on ``sys.path``, as it does ``confine``. Order
in the child, after ``setsid()``:

    join_cgroups(request["cgroup_procs"])   # run.join_paths; empty for the watchdog
    ...setgroups / setresgid / setresuid...  # v1 cgroup files are root's: join first
    confine(Confinement(oom_score_adj=SANDBOX_OOM_SCORE_ADJ, ...))  # before Landlock,
                                             # which would refuse the cgroup.procs write

Everything the child then execs (bwrap, a supervisor, the interpreter, whatever user code
forks) inherits both the cgroups and the OOM score. The daemon and the spawner keep theirs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

# The OOM killer's first pick under memory pressure is user code, never the daemon.
SANDBOX_OOM_SCORE_ADJ = 1000


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
