"""Start a child the way the spawner helper does: fork, setsid, join the run's cgroups, raise
oom_score_adj (bootstrap/confine's helper), optionally drop to another uid, then exec."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Sequence

from sandbox_executor.bootstrap import confine, run_join


def spawn(
    argv: Sequence[str],
    join_paths: Sequence[str] = (),
    *,
    uid_gid: tuple[int, int] | None = None,
    stdout: int | None = None,
) -> int:
    """Fork and exec ``argv``; raise if anything before exec failed in the child."""
    errr, errw = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            os.close(errr)
            os.setsid()
            run_join.join_cgroups(join_paths)
            confine.set_oom_score_adj(run_join.SANDBOX_OOM_SCORE_ADJ)
            if uid_gid is not None:
                os.setgroups([])
                os.setresgid(uid_gid[1], uid_gid[1], uid_gid[1])
                os.setresuid(uid_gid[0], uid_gid[0], uid_gid[0])
            if stdout is not None:
                os.dup2(stdout, 1)
            os.execv(argv[0], list(argv))
        except BaseException as exc:
            os.write(errw, f"{type(exc).__name__}: {exc}".encode())
        finally:
            os._exit(127)
    os.close(errw)
    with os.fdopen(errr, "rb") as pipe:
        failure = pipe.read()
    if failure:
        os.waitpid(pid, 0)
        raise OSError(failure.decode())
    return pid


def wait_exit(pid: int, timeout: float) -> int | None:
    """The child's wait status, or None if it is still running at ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.01)
    return None


def reap(pid: int) -> None:
    """Kill and reap a child a failed test left behind."""
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def alive(pid: int, start: int | None) -> bool:
    """Whether the process ``pid`` that started at ``start`` still exists (zombies do not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return False
    rest = data[data.rindex(b")") + 2 :].split()
    return rest[0] != b"Z" and (start is None or int(rest[19]) == start)
