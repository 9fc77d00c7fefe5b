"""The one spawn / capture / kill path, with real processes through the real spawner."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest

from sandbox_executor.errors import SandboxStartError
from sandbox_executor.process import Launch, SandboxProcess
from sandbox_executor.spawner import Spawner

ENV = {"PATH": "/usr/bin:/bin"}


@pytest.fixture
async def spawner() -> AsyncIterator[Spawner]:
    sp = Spawner("/usr/bin/python3")
    yield sp
    await sp.aclose()


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


async def test_output_is_captured_and_the_child_ends_are_closed(spawner: Spawner) -> None:
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    launch = Launch(
        ["/bin/sh", "-c", "echo hello; echo oops >&2; exit 4"], {0: null, 1: out_w, 2: out_w}, env=ENV
    )
    process = await SandboxProcess.spawn(spawner, launch, ours=[out_r])
    assert not _is_open(out_w) and not _is_open(null)
    out = await process.capture(out_r, 1024)
    code, usage = await process.exited
    await process.drain([out])
    assert code == 4 and usage is not None
    assert out.data() == b"hello\noops\n" and not out.truncated


async def test_capture_keeps_the_tail_when_asked(spawner: Spawner) -> None:
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    script = "i=0; while [ $i -lt 500 ]; do echo line$i; i=$((i+1)); done"
    process = await SandboxProcess.spawn(spawner, Launch(["/bin/sh", "-c", script], {1: out_w}, env=ENV))
    tail = await process.capture(out_r, 16, tail=True)
    await process.exited
    await process.drain([tail])
    assert tail.data() == b"line498\nline499\n" and tail.truncated and tail.total == 3890


async def test_kill_without_an_info_fd_kills_the_process_group(spawner: Spawner) -> None:
    launch = Launch(["/bin/sh", "-c", "sleep 60 & sleep 60"], {}, env=ENV)
    process = await SandboxProcess.spawn(spawner, launch)
    assert process.alive
    await process.kill()
    code, _ = process.exited.result()
    assert code == -9 and not process.alive
    await process.kill()  # a second kill is a no-op


async def test_a_failed_spawn_closes_every_descriptor_and_says_why(spawner: Spawner) -> None:
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    info_r, info_w = os.pipe2(os.O_CLOEXEC)
    launch = Launch(["/nonexistent/binary"], {1: out_w, 9: info_w}, env=ENV, info_fd=info_r)
    with pytest.raises(SandboxStartError, match="cannot start the sandbox"):
        await SandboxProcess.spawn(spawner, launch, ours=[out_r])
    assert not any(_is_open(fd) for fd in (out_r, out_w, info_r, info_w))


async def test_lent_descriptors_stay_ours(spawner: Spawner) -> None:
    shared = os.memfd_create("shared", os.MFD_CLOEXEC)
    os.write(shared, b"from a shared file\n")
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    launch = Launch(["/bin/sh", "-c", "cat /dev/fd/7"], {1: out_w}, lent={7: shared}, env=ENV)
    process = await SandboxProcess.spawn(spawner, launch)
    out = await process.capture(out_r, 1024)
    await process.exited
    await process.drain([out])
    assert out.data() == b"from a shared file\n"
    assert _is_open(shared)
    os.close(shared)
