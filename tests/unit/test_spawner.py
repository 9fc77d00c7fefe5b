"""The spawner helper process: fds, identity, limits, exit status and clean rusage."""

from __future__ import annotations

import array
import json
import os
import resource
import socket
import subprocess

import pytest

from sandbox_executor.spawner import SPAWNER_PROGRAM, Spawner, SpawnError


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
