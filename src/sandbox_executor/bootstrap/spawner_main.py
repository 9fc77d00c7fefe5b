# The spawner: a small, single-threaded helper process that forks and execs every sandbox.
# Run as `python3 -I -S spawner_main.py FD DAEMON_PID`; FD is its end of a SOCK_SEQPACKET
# socketpair.
#
# Why a separate process: a child forked from the daemon inherits the daemon's memory until
# exec, and the kernel records that old image's high-water mark in the child's rusage (and
# charges the child for tearing it down). Forking from this ~10 MB process keeps wait4's
# ru_maxrss and CPU time about the sandbox, and keeps fork cost flat however large the daemon
# grows. Being single-threaded, it can also run setuid/setrlimit between fork and exec safely.
#
# Protocol (JSON, one message per packet): request {"argv", "env", "cwd", "fds": [targets],
# "uid", "gid", "rlimits": [[res, soft, hard]...], "umask", "nproc_headroom", "confine",
# "sweep_orphans", "cgroup_procs": [paths], "oom_score_adj"}
# with the fds attached in the same order; reply {"pid"} or {"error"}; later, unsolicited
# {"exit": pid, "status", "ru": [...]}. The forked child runs CHILD_STEPS in order, then
# launches (spawner_child.py says what each step does and why in that order).
#
# Like bwrap's --die-with-parent, it dies with the daemon; it is non-dumpable (same-uid
# sandboxes cannot read or trace it) and a child subreaper: a process orphaned by a
# supervised sandbox whose supervisor died comes back here and is killed (_sweep_orphans).
import array
import json
import os
import select
import signal
import socket
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from . import confine, spawner_child, supervisor
else:
    # `python3 -I -S` puts no script directory on sys.path: our siblings come from here.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import confine
    import spawner_child
    import supervisor

MAX_FDS = 32


def _send(sock: socket.socket, doc: dict[str, Any]) -> None:
    sock.send(json.dumps(doc).encode())


class Children:
    """The children this spawner started and has not reaped yet."""

    def __init__(self) -> None:
        self.known: set[int] = set()
        # A supervised child's report pipe: the tree's rusage without the supervisor's own.
        self.reports: dict[int, int] = {}
        # Whose exit may leave orphans that come back to us (no pid namespace around them).
        self.sweep: set[int] = set()

    def reap(self, sock: socket.socket) -> None:
        sweep = False
        while True:
            try:
                pid, status, ru = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            if pid not in self.known:
                continue  # an orphan adopted as subreaper that ended on its own
            self.known.discard(pid)
            usage = [ru.ru_utime, ru.ru_stime, ru.ru_maxrss, ru.ru_inblock, ru.ru_oublock]
            reported = self._reported_usage(pid)
            if pid in self.sweep:
                self.sweep.discard(pid)
                # A supervisor that reported killed its whole tree itself before exiting.
                sweep = sweep or reported is None
            usage = reported or usage
            _send(sock, {"exit": pid, "status": status, "ru": usage})
        if sweep:
            self._sweep_orphans()

    def _reported_usage(self, pid: int) -> list[float] | None:
        fd = self.reports.pop(pid, None)
        if fd is None:
            return None
        try:
            doc = json.loads(os.read(fd, 4096) or b"null")
        except (OSError, ValueError):
            doc = None
        finally:
            os.close(fd)
        ru = doc.get("ru") if isinstance(doc, dict) else None
        return ru if isinstance(ru, list) and len(ru) == 5 else None

    def _sweep_orphans(self) -> None:
        """SIGKILL every child we did not start (re-parented orphans) and what they started.

        Only a supervisor killed outright (SIGKILL, the OOM killer) or a bare command's exit
        leaves such orphans; the walk repeats until none is left, as the supervisor's does.
        Killed orphans are reaped by the main loop (zombies do not count as alive here).
        """
        me = os.getpid()
        while True:
            table = supervisor.process_table()
            strays = [pid for pid in table.get(me, ()) if pid not in self.known]
            victims = [*strays, *(d for pid in strays for d in supervisor.descendants(pid, table=table))]
            if not victims:
                return
            for pid in victims:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.001)  # let the kernel finish the ones already dying


def _spawn(sock: socket.socket, children: Children, req: dict[str, Any], fds: list[int]) -> None:
    errr, errw = os.pipe2(os.O_CLOEXEC)
    supervised = bool((req.get("confine") or {}).get("supervise"))
    # Non-blocking: a supervisor killed before it reported must not hang the read.
    report_r, report_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK) if supervised else (-1, -1)
    pid = os.fork()
    if pid == 0:
        os.close(errr)
        if report_r >= 0:
            os.close(report_r)
        sock.close()
        spawner_child.run(req, fds, errw, report_w)
    os.close(errw)
    if report_w >= 0:
        os.close(report_w)
    for fd in fds:
        os.close(fd)
    with os.fdopen(errr, "rb") as pipe:
        failure = pipe.read()
    if failure:
        os.waitpid(pid, 0)
        if report_r >= 0:
            os.close(report_r)
        _send(sock, {"error": failure.decode(errors="replace")})
        return
    children.known.add(pid)
    if report_r >= 0:
        children.reports[pid] = report_r
    if supervised or req.get("sweep_orphans"):
        children.sweep.add(pid)
    _send(sock, {"pid": pid})


def main() -> None:
    confine.set_parent_death_signal(signal.SIGKILL)
    if len(sys.argv) > 2 and os.getppid() != int(sys.argv[2]):
        os._exit(0)  # the daemon died before the prctl above
    confine.set_dumpable(False)
    confine.set_child_subreaper()
    sock = socket.socket(fileno=int(sys.argv[1]))
    children = Children()
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon decides when we stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        try:
            ready, _, _ = select.select([sock.fileno(), wake_r], [], [])
        except InterruptedError:
            continue
        if wake_r in ready:
            try:
                while os.read(wake_r, 512):
                    pass
            except BlockingIOError:
                pass
            children.reap(sock)
        if sock.fileno() in ready:
            fds = array.array("i")
            msg, ancdata, _flags, _addr = sock.recvmsg(1 << 20, socket.CMSG_SPACE(MAX_FDS * fds.itemsize))
            if not msg:
                return  # the daemon is gone; our children die with us (parent-death signals)
            for level, kind, data in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
            try:
                _spawn(sock, children, json.loads(msg), list(fds))
            except Exception as exc:  # never die on one bad request
                _send(sock, {"error": f"{type(exc).__name__}: {exc}"})
            children.reap(sock)


main()
