"""The spawner helper process: fds, identity, limits, exit status and clean rusage."""

from __future__ import annotations

import array
import json
import os
import resource
import socket
import subprocess

import pytest

from sandbox_executor.spawner import SPAWNER_PROGRAM, Confine, Spawner, SpawnError


@pytest.fixture()
async def spawner():
    sp = Spawner("/usr/bin/python3")
    yield sp
    await sp.aclose()


async def test_fds_land_on_their_numbers_and_status_is_reported(spawner: Spawner) -> None:
    r, w = os.pipe()
    devnull = os.open("/dev/null", os.O_RDONLY)
    child = await spawner.spawn(
        ["/bin/sh", "-c", 'echo "fd5" >&5; echo "$FOO"; exit 3'],
        fds={0: devnull, 1: w, 2: w, 5: w},
        env={"PATH": "/usr/bin:/bin", "FOO": "bar"},
    )
    os.close(w)
    os.close(devnull)
    code, usage = await child.exited
    out = b""
    while chunk := os.read(r, 4096):
        out += chunk
    os.close(r)
    assert code == 3
    assert out.splitlines() == [b"fd5", b"bar"]
    assert usage is not None


async def test_rusage_is_not_polluted_by_the_daemon(spawner: Spawner) -> None:
    ballast = bytearray(300 * 1024 * 1024)  # the daemon grows; the child's peak must not
    ballast[::4096] = b"x" * len(ballast[::4096])
    child = await spawner.spawn(["/bin/true"], fds={0: 0, 1: 1, 2: 2}, env={})
    _, usage = await child.exited
    assert usage is not None
    assert usage.ru_maxrss < 64 * 1024, usage  # KiB: far below the 300 MiB ballast
    del ballast


@pytest.mark.skipif(os.geteuid() != 0, reason="switching uid needs root")
async def test_identity_and_limits_apply_to_the_child(spawner: Spawner) -> None:
    r, w = os.pipe()
    child = await spawner.spawn(
        ["/bin/sh", "-c", "id -u; id -g; id -G; ulimit -n"],
        fds={0: 0, 1: w, 2: w},
        env={"PATH": "/usr/bin:/bin"},
        uid_gid=(65534, 65534),
        rlimits=[(resource.RLIMIT_NOFILE, 77, 77)],
    )
    os.close(w)
    await child.exited
    lines = os.read(r, 4096).decode().split()
    os.close(r)
    assert lines == ["65534", "65534", "65534", "77"]


async def test_exec_failure_is_an_error_not_a_child(spawner: Spawner) -> None:
    with pytest.raises(SpawnError, match="No such file"):
        await spawner.spawn(["/nonexistent/program"], fds={0: 0, 1: 1, 2: 2}, env={})
    child = await spawner.spawn(["/bin/true"], fds={0: 0, 1: 1, 2: 2}, env={})
    assert (await child.exited)[0] == 0


async def test_spawner_restarts_after_dying(spawner: Spawner) -> None:
    child = await spawner.spawn(["/bin/true"], fds={0: 0, 1: 1, 2: 2}, env={})
    await child.exited
    assert spawner._proc is not None
    spawner._proc.kill()
    spawner._proc.wait()
    child = await spawner.spawn(["/bin/true"], fds={0: 0, 1: 1, 2: 2}, env={})
    assert (await child.exited)[0] == 0


def test_a_second_event_loop_gets_a_working_helper() -> None:
    import asyncio

    spawner = Spawner("/usr/bin/python3")

    async def once() -> int:
        child = await spawner.spawn(["/bin/true"], fds={0: 0, 1: 1, 2: 2}, env={})
        return (await child.exited)[0]

    assert asyncio.run(once()) == 0
    assert asyncio.run(asyncio.wait_for(once(), 10)) == 0

    async def close() -> None:
        await spawner.aclose()

    asyncio.run(close())


def _start_program() -> tuple[socket.socket, subprocess.Popen[bytes]]:
    """The spawner program itself, on a plain socketpair (no Spawner class in between)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    argv = ["/usr/bin/python3", "-I", "-S", SPAWNER_PROGRAM, str(theirs.fileno())]
    proc = subprocess.Popen(argv, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
    theirs.close()
    ours.settimeout(10)
    return ours, proc


def _request(argv: list[str], targets: list[int]) -> bytes:
    doc = {"argv": argv, "env": {"PATH": "/usr/bin:/bin"}, "cwd": None, "fds": targets}
    return json.dumps({**doc, "uid": None, "gid": None, "rlimits": [], "umask": None}).encode()


def test_the_program_speaks_its_protocol_over_a_socketpair() -> None:
    sock, proc = _start_program()
    r, w = os.pipe()
    rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [w]).tobytes())]
    sock.sendmsg([_request(["/bin/sh", "-c", "echo hi; exit 7"], [1])], rights)
    os.close(w)
    reply = json.loads(sock.recv(65536))
    exit_report = json.loads(sock.recv(65536))
    assert exit_report["exit"] == reply["pid"] and os.waitstatus_to_exitcode(exit_report["status"]) == 7
    assert len(exit_report["ru"]) == 5
    assert os.read(r, 100) == b"hi\n"
    os.close(r)
    sock.sendmsg([_request(["/nonexistent"], [])])
    assert "error" in json.loads(sock.recv(65536))
    sock.close()  # the daemon is gone: the spawner leaves
    assert proc.wait(10) == 0


# ----------------------------------------------------------- without bwrap (landlock, none)
def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except OSError:
        return False


async def _read_line(fd: int) -> str:
    import asyncio

    loop = asyncio.get_running_loop()
    return (await loop.run_in_executor(None, os.read, fd, 100)).decode().strip()


# Prints the pid of a setsid'd grandchild (its parent exits at once), then waits forever.
ESCAPER = "setsid sh -c 'echo $$; exec sleep 300' & wait; sleep 300"


async def test_a_supervised_child_takes_its_setsid_descendants_along(spawner: Spawner) -> None:
    import asyncio
    import signal

    r, w = os.pipe()
    child = await spawner.spawn(
        ["/bin/sh", "-c", ESCAPER],
        fds={0: 0, 1: w, 2: 2},
        env={"PATH": "/usr/bin:/bin"},
        confine=Confine(policy=None, seccomp_fd=None),  # the supervisor alone
    )
    os.close(w)
    escaped = int(await _read_line(r))
    os.close(r)
    assert _alive(escaped)
    os.kill(child.pid, signal.SIGTERM)  # how the daemon stops a supervised sandbox
    code, usage = await asyncio.wait_for(child.exited, 10)
    assert code == -signal.SIGKILL and usage is not None  # exits as its interpreter did
    assert not _alive(escaped)


async def test_orphans_of_a_killed_supervisor_come_back_to_the_spawner_and_die(spawner: Spawner) -> None:
    import asyncio
    import signal

    r, w = os.pipe()
    child = await spawner.spawn(
        ["/bin/sh", "-c", ESCAPER],
        fds={0: 0, 1: w, 2: 2},
        env={"PATH": "/usr/bin:/bin"},
        confine=Confine(policy=None, seccomp_fd=None),
    )
    os.close(w)
    escaped = int(await _read_line(r))
    os.close(r)
    os.kill(child.pid, signal.SIGKILL)  # no chance to kill its tree (the OOM killer's way)
    await asyncio.wait_for(child.exited, 10)
    for _ in range(500):  # the spawner (a subreaper) adopted it and kills it
        if not _alive(escaped):
            break
        await asyncio.sleep(0.01)
    assert not _alive(escaped)


FORKS = """
import os, resource, signal, time
cap = resource.getrlimit(resource.RLIMIT_NPROC)[0]
children = []
for _ in range(40):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    children.append(pid)
for pid in children:
    os.kill(pid, signal.SIGKILL)
print(cap, len(children))
"""


async def test_nproc_headroom_caps_what_the_child_may_add(spawner: Spawner) -> None:
    import asyncio

    r, w = os.pipe()
    uid_gid = (65534, 65534) if os.geteuid() == 0 else None
    child = await spawner.spawn(
        ["/usr/bin/python3", "-I", "-S", "-c", FORKS],
        fds={0: 0, 1: w, 2: 2},
        env={"PATH": "/usr/bin:/bin"},
        uid_gid=uid_gid,
        nproc_headroom=10,
    )
    os.close(w)
    await asyncio.wait_for(child.exited, 30)
    cap, started = map(int, os.read(r, 4096).decode().split())
    os.close(r)
    assert cap >= 10  # what the uid ran when it started, plus the headroom
    assert 1 <= started <= 10  # the headroom (less whatever else of the uid started), no more
