# The spawner: a small, single-threaded helper process that forks and execs every sandbox.
# Run as `python3 -I -S spawner_main.py FD`; FD is its end of a SOCK_SEQPACKET socketpair.
#
# Why a separate process: a child forked from the daemon inherits the daemon's memory until
# exec, and the kernel records that old image's high-water mark in the child's rusage (and
# charges the child for tearing it down). Forking from this ~10 MB process keeps wait4's
# ru_maxrss and CPU time about the sandbox, and keeps fork cost flat however large the daemon
# grows. Being single-threaded, it can also run setuid/setrlimit between fork and exec safely.
#
# Protocol (JSON, one message per packet): request {"argv", "env", "cwd", "fds": [targets],
# "uid", "gid", "rlimits": [[res, soft, hard]...]} with the fds attached in the same order;
# reply {"pid"} or {"error"}; later, unsolicited {"exit": pid, "status", "ru": [...]}.
import array
import fcntl
import json
import os
import resource
import select
import signal
import socket
import sys
from typing import Any, NoReturn

MAX_FDS = 32


def _die_with_parent() -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() == 1:
        os._exit(0)


def _send(sock: socket.socket, doc: dict[str, Any]) -> None:
    sock.send(json.dumps(doc).encode())


def _reap(sock: socket.socket) -> None:
    while True:
        try:
            pid, status, ru = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        usage = [ru.ru_utime, ru.ru_stime, ru.ru_maxrss, ru.ru_inblock, ru.ru_oublock]
        _send(sock, {"exit": pid, "status": status, "ru": usage})


def _child(req: dict[str, Any], fds: list[int], errw: int) -> NoReturn:
    try:
        _exec_child(req, fds, errw)
    except BaseException as exc:  # reported to the daemon, then exit
        try:
            os.write(_ERRW[0], f"{type(exc).__name__}: {exc}".encode()[:4000])
        finally:
            os._exit(127)


_ERRW = [-1]


def _exec_child(req: dict[str, Any], fds: list[int], errw: int) -> NoReturn:
    _ERRW[0] = errw
    os.setsid()
    for sig in (signal.SIGCHLD, signal.SIGPIPE, signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    signal.set_wakeup_fd(-1)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    uid, gid = req.get("uid"), req.get("gid")
    if gid is not None:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
    if uid is not None:
        os.setresuid(uid, uid, uid)
    for res, soft, hard in req.get("rlimits", ()):
        resource.setrlimit(res, (soft, hard))
    if req.get("umask") is not None:
        os.umask(req["umask"])
    targets = req["fds"]
    # Move everything above the targets first so no dup2 clobbers a source.
    floor = max([*targets, 2]) + 1
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, floor) for fd in fds]
    errw = _ERRW[0] = fcntl.fcntl(errw, fcntl.F_DUPFD_CLOEXEC, floor)
    for target, fd in zip(targets, moved, strict=True):
        os.dup2(fd, target, inheritable=True)
    # Close everything else (close_range under the hood), keeping the targets and errw.
    low = 0
    for fd in sorted({*targets, errw}):
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 20)
    if req.get("cwd"):
        os.chdir(req["cwd"])
    os.execvpe(req["argv"][0], req["argv"], req["env"])  # noqa: S606 - argv comes from the daemon


def _spawn(sock: socket.socket, req: dict[str, Any], fds: list[int]) -> None:
    errr, errw = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(errr)
        sock.close()
        _child(req, fds, errw)
    os.close(errw)
    for fd in fds:
        os.close(fd)
    with os.fdopen(errr, "rb") as pipe:
        failure = pipe.read()
    if failure:
        os.waitpid(pid, 0)
        _send(sock, {"error": failure.decode(errors="replace")})
    else:
        _send(sock, {"pid": pid})


def main() -> None:
    _die_with_parent()
    sock = socket.socket(fileno=int(sys.argv[1]))
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
            _reap(sock)
        if sock.fileno() in ready:
            fds = array.array("i")
            msg, ancdata, _flags, _addr = sock.recvmsg(1 << 20, socket.CMSG_SPACE(MAX_FDS * fds.itemsize))
            if not msg:
                return  # the daemon is gone; our children die with us (--die-with-parent)
            for level, kind, data in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
            try:
                _spawn(sock, json.loads(msg), list(fds))
            except Exception as exc:  # never die on one bad request
                _send(sock, {"error": f"{type(exc).__name__}: {exc}"})
            _reap(sock)


main()
