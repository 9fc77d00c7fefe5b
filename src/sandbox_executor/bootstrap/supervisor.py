"""One supervisor per sandbox where there is no pid namespace (the landlock level).

With bwrap, the interpreter is the init of its own pid namespace: when it ends, or when
bwrap is killed, the kernel kills every process of the sandbox, setsid'd or not. Without
namespaces this process stands in for that init. The spawner's forked child calls
:func:`supervise`, which

* becomes a child subreaper: every orphan of the sandbox (double-forked, setsid'd,
  ``nohup``'d) is re-parented to it instead of escaping to the container's init;
* stays outside the Landlock domain and non-dumpable, so sandboxed code can neither
  signal it (Landlock ABI >= 6 scopes signals) nor read or trace it;
* forks the interpreter, which confines itself and execs (``start``), reaps everything,
  and when the interpreter ends, or on SIGTERM/SIGINT/SIGHUP, SIGKILLs every descendant,
  walking /proc until none is left;
* gets SIGTERM when its parent (the spawner) dies, so a SIGKILLed daemon takes every
  sandbox with it (daemon -> spawner by PR_SET_PDEATHSIG SIGKILL, spawner -> supervisor
  by SIGTERM, which kills the tree before exiting);
* exits the way the interpreter did (same exit code, or the same signal), after writing
  the tree's resource usage (``getrusage(RUSAGE_CHILDREN)``: every reaped descendant,
  not the supervisor itself) to ``report_fd`` as one JSON line.

Standard library only, and nothing of ours imported: the spawner (``python3 -I -S``)
loads it as plain ``supervisor`` with this directory on ``sys.path``.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import time
from collections.abc import Callable
from typing import NoReturn

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_PR_SET_PDEATHSIG, _PR_SET_DUMPABLE, _PR_SET_CHILD_SUBREAPER = 1, 4, 36


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    zero = ctypes.c_ulong(0)
    if libc.prctl(ctypes.c_int(option), ctypes.c_ulong(value), zero, zero, zero) < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def process_table(proc: str = "/proc") -> dict[int, list[int]]:
    """Parent pid -> its live (not zombie) children, from one walk of ``proc``."""
    children: dict[int, list[int]] = {}
    for name in os.listdir(proc):
        if not name.isdigit():
            continue
        try:
            with open(f"{proc}/{name}/stat", "rb") as fh:
                data = fh.read()
        except OSError:  # exited meanwhile
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        fields = data[data.rindex(b")") + 2 :].split()
        if fields[0] in (b"Z", b"X"):
            continue
        children.setdefault(int(fields[1]), []).append(int(name))
    return children


def descendants(root: int, proc: str = "/proc", table: dict[int, list[int]] | None = None) -> list[int]:
    """Live (not zombie) descendants of ``root``, parents before children."""
    children = process_table(proc) if table is None else table
    found: list[int] = []
    queue = [root]
    while queue:
        for pid in children.get(queue.pop(), ()):
            found.append(pid)
            queue.append(pid)
    return found


def kill_descendants(root: int, proc: str = "/proc") -> int:
    """SIGKILL every descendant of ``root`` until a walk finds none; how many were sent.

    A process forking between the walk and the kill leaves a child that the next walk
    finds (under its parent, or under ``root`` once re-parented), so the loop ends only
    when the whole subtree is dead; the process limit bounds how long a fork bomb lasts.
    """
    sent = 0
    while True:
        alive = descendants(root, proc)
        if not alive:
            return sent
        for pid in alive:
            try:
                os.kill(pid, signal.SIGKILL)
                sent += 1
            except ProcessLookupError:
                pass
        time.sleep(0.001)  # let the kernel finish the ones already dying


def tree_usage() -> list[float]:
    """utime, stime, maxrss (KiB), inblock, oublock of every reaped descendant."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return [ru.ru_utime, ru.ru_stime, ru.ru_maxrss, ru.ru_inblock, ru.ru_oublock]


def supervise(
    start: Callable[[], NoReturn],
    report_fd: int | None = None,
    parent_death_signal: int = signal.SIGTERM,
) -> NoReturn:
    """Run ``start`` (confine and exec the interpreter) in a child; never returns.

    Call it in a freshly forked child of a single-threaded process. ``start`` runs in the
    interpreter's process with default signal dispositions and PR_SET_PDEATHSIG SIGKILL
    (it dies with this supervisor); it must exec or ``os._exit``. Every descriptor but
    ``report_fd`` is closed here after the fork (stdin/out/err become /dev/null), so the
    supervisor holds no end of the sandbox's pipes.
    """
    me = os.getpid()
    parent = os.getppid()
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    _prctl(_PR_SET_DUMPABLE, 0)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    state = {"killing": False}

    def stop(_sig: int, _frame: object) -> None:
        state["killing"] = True
        kill_descendants(me)

    for sig in STOP_SIGNALS:
        signal.signal(sig, stop)
    _prctl(_PR_SET_PDEATHSIG, parent_death_signal)
    if os.getppid() != parent:  # the parent died before the prctl
        stop(parent_death_signal, None)
    child = os.fork()
    if child == 0:
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != me:
            os._exit(127)
        _prctl(_PR_SET_DUMPABLE, 1)
        start()
    _detach_descriptors(report_fd)
    if state["killing"]:
        kill_descendants(me)
    status = _reap_all(child, me, state)
    if report_fd is not None:
        doc = {"status": status, "ru": tree_usage()}
        try:
            os.write(report_fd, (json.dumps(doc) + "\n").encode())
        except OSError:
            pass
    _exit_like(status)


def _detach_descriptors(report_fd: int | None) -> None:
    null = os.open(os.devnull, os.O_RDWR)
    for target in (0, 1, 2):
        if target != report_fd:
            os.dup2(null, target)
    keep = sorted({0, 1, 2, *(() if report_fd is None else (report_fd,))})
    low = 0
    for fd in keep:
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 20)


def _reap_all(child: int, me: int, state: dict[str, bool]) -> int:
    """Reap until no child is left; the interpreter's wait status.

    When the interpreter ends (or a stop signal came), everything it left behind is
    killed, as the kernel does when a pid namespace's init exits. A /proc walk can miss a
    process caught mid-reparenting (seen on 6.18: a grandchild whose parent was exiting),
    so the end is not "a walk found nothing" but "no child left": as a subreaper, every
    live process of the tree keeps a chain of parents up to here.
    """
    status = 0
    while True:
        try:
            pid, got, _ = os.wait4(-1, os.WNOHANG if state["killing"] else 0)
        except ChildProcessError:
            return status
        if pid == child:
            status = got
            state["killing"] = True
        if state["killing"] and pid == 0:  # children left, none exited just now
            kill_descendants(me)
            time.sleep(0.001)


def _exit_like(status: int) -> NoReturn:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig not in (signal.SIGKILL, signal.SIGSTOP):  # those two cannot be caught
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {sig})
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)  # a signal that does not terminate (SIGCHLD...): say so
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1)
