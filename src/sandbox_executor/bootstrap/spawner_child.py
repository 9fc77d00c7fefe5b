"""What the spawner's forked child does before its program runs: one explicit sequence.

:data:`STEPS` run in order, then :func:`launch`; any step that raises ends the child with
its message on the error pipe (the daemon gets ``{"error"}``, no sandbox starts). Order:

1. ``new_session``: a session and process group of its own (the daemon's fallback kill
   is by group), default signal dispositions, nothing blocked.
1b. ``join_run``: into the run's cgroups (their files are root's), with ``oom_score_adj``
   1000 (``/proc/self`` is no longer ours after the uid switch): everything exec'd from
   here on, a supervisor included, is born inside its run's bounds and is the kernel's
   first pick under memory pressure (bootstrap/run_join.py).
2. ``switch_ids``: a root daemon's children drop to the sandbox user (no supplementary
   groups, then gid, then uid). Whatever needs root's files or a writable /proc/self
   (joining a cgroup, raising oom_score_adj) belongs before it.
3. ``set_rlimits``: the request's table, then RLIMIT_NPROC from ``nproc_headroom`` where
   no user namespace counts the sandbox's processes apart (:func:`uid_tasks`).
4. ``set_umask``, 5. ``place_fds`` (the descriptors at their numbers, the rest closed),
   6. ``change_dir``.

``launch`` execs the command (bwrap, or a bare one), or, with ``confine`` in the request
(the landlock level), applies bootstrap/confine.py (no_new_privs, Landlock, seccomp) and
execs, under a supervisor when asked (bootstrap/supervisor.py): this process then stays as
the sandbox's subreaper and its child confines itself and execs.

Standard library only, nothing of ours but its siblings (plain imports: the spawner puts
this directory on sys.path). Runs in a forked child of a single-threaded process.
"""

from __future__ import annotations

import fcntl
import os
import resource
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from . import confine, run_join, supervisor
else:
    import confine
    import run_join
    import supervisor


class Child:
    """The request being launched and the descriptors that travel with it."""

    def __init__(self, req: dict[str, Any], fds: list[int], errw: int, report_w: int) -> None:
        self.req = req
        self.fds = fds
        self.errw = errw  # close-on-exec: EOF tells the spawner the program runs
        self.report_w = report_w  # the supervisor's report pipe, -1 without one


def new_session(child: Child) -> None:
    os.setsid()
    for sig in (signal.SIGCHLD, signal.SIGPIPE, signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    signal.set_wakeup_fd(-1)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


def join_run(child: Child) -> None:
    # OSError aborts the spawn: a sandbox outside its cgroup would run unbounded.
    run_join.join_cgroups(child.req.get("cgroup_procs") or ())
    if child.req.get("oom_score_adj") is not None:
        # Non-dumpable like the spawner, this process's /proc/self files are root's: ours
        # to write only while it is dumpable, for this one write (exec resets it anyway;
        # a supervisor stays non-dumpable).
        confine.set_dumpable(True)
        try:
            confine.set_oom_score_adj(int(child.req["oom_score_adj"]))
        finally:
            confine.set_dumpable(False)


def switch_ids(child: Child) -> None:
    uid, gid = child.req.get("uid"), child.req.get("gid")
    if gid is not None:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
    if uid is not None:
        os.setresuid(uid, uid, uid)


def uid_tasks(uid: int, proc: str = "/proc") -> int:
    """How many tasks (threads included) run with real uid ``uid``: what the kernel
    compares with RLIMIT_NPROC at every fork, when no user namespace separates them."""
    total = 0
    for name in os.listdir(proc):
        if not name.isdigit():
            continue
        try:
            with open(f"{proc}/{name}/status", "rb") as fh:
                data = fh.read()
            at = data.index(b"\nUid:\t") + 6
            if int(data[at : data.index(b"\t", at)]) != uid:
                continue
            at = data.index(b"\nThreads:\t") + 10
            total += int(data[at : data.index(b"\n", at)])
        except (OSError, ValueError):  # gone meanwhile, or a field missing
            continue
    return total


def set_rlimits(child: Child) -> None:
    for res, soft, hard in child.req.get("rlimits", ()):
        resource.setrlimit(res, (soft, hard))
    headroom = child.req.get("nproc_headroom")
    if headroom is not None:
        # Every process of the uid counts (the daemon's too when it shares the uid): this
        # child may add ``headroom`` tasks to what runs now, never starve the others.
        cap = uid_tasks(os.getuid()) + int(headroom)
        resource.setrlimit(resource.RLIMIT_NPROC, (cap, cap))


def set_umask(child: Child) -> None:
    if child.req.get("umask") is not None:
        os.umask(child.req["umask"])


def place_fds(child: Child) -> None:
    targets = child.req["fds"]
    # Move everything above the targets first so no dup2 clobbers a source.
    floor = max([*targets, 2]) + 1
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, floor) for fd in child.fds]
    child.errw = fcntl.fcntl(child.errw, fcntl.F_DUPFD_CLOEXEC, floor)
    if child.report_w >= 0:
        child.report_w = fcntl.fcntl(child.report_w, fcntl.F_DUPFD_CLOEXEC, floor)
    for target, fd in zip(targets, moved, strict=True):
        os.dup2(fd, target, inheritable=True)
    # Close everything else (close_range under the hood), keeping the targets and pipes.
    keep = {*targets, child.errw, *([child.report_w] if child.report_w >= 0 else [])}
    low = 0
    for fd in sorted(keep):
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 20)


def change_dir(child: Child) -> None:
    if child.req.get("cwd"):
        os.chdir(child.req["cwd"])


STEPS: list[Callable[[Child], None]] = [
    new_session,
    join_run,
    switch_ids,
    set_rlimits,
    set_umask,
    place_fds,
    change_dir,
]


def _read_program(fd: int | None) -> bytes | None:
    if fd is None:
        return None
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    os.close(fd)  # the program never sees its own filter's descriptor
    return b"".join(chunks)


def confinement(spec: dict[str, Any]) -> confine.Confinement:
    """The request's ``confine`` part as bootstrap/confine.py's Confinement."""
    policy = spec.get("policy")
    return confine.Confinement(
        policy=confine.Policy(**policy) if policy is not None else None,
        seccomp_program=_read_program(spec.get("seccomp_fd")),
    )


def launch(child: Child) -> NoReturn:
    argv, env = child.req["argv"], child.req["env"]
    spec = child.req.get("confine")
    if not spec:
        os.execvpe(argv[0], argv, env)  # noqa: S606 - argv comes from the daemon
    confined = confinement(spec)

    def start() -> NoReturn:
        try:
            confine.confine(confined)
            os.execvpe(argv[0], argv, env)  # noqa: S606 - argv comes from the daemon
        except BaseException as exc:
            fail(child.errw, exc)

    if spec.get("supervise"):
        supervisor.supervise(start, report_fd=child.report_w)
    start()


def fail(errw: int, exc: BaseException) -> NoReturn:
    try:
        os.write(errw, f"{type(exc).__name__}: {exc}".encode()[:4000])
    finally:
        os._exit(127)


def run(req: dict[str, Any], fds: list[int], errw: int, report_w: int) -> NoReturn:
    """The whole child: every step, then the launch; never returns."""
    child = Child(req, fds, errw, report_w)
    try:
        for step in STEPS:
            step(child)
        launch(child)
    except BaseException as exc:  # reported to the daemon, then exit
        fail(child.errw, exc)
