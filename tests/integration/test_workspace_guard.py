"""The workspace write cap with real writer processes on a real small tmpfs workspace
(mounted for the test, root only; the scan-only mode also runs unprivileged)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox_executor.poller import Poller
from sandbox_executor.workspace_guard import WorkspaceGuard, WriteBreach, detect_mode

MIB = 1024 * 1024
CAP = 64 * MIB
# Documented overshoot bound: ~2.5 GiB/s of writes x (5 ms shortest interval + the confirm
# scan + the kill), rounded up generously for a loaded shared host.
OVERSHOOT = 48 * MIB

# Writes MB MiB to PATH in 1 MiB chunks as fast as it can, says "done", then waits.
WRITER = """
import os, sys, time
path, mb = sys.argv[1], int(sys.argv[2])
unlink = len(sys.argv) > 3
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
if unlink:
    os.unlink(path)
chunk = b"\\1" * (1 << 20)
for _ in range(mb):
    os.write(fd, chunk)
print("done", flush=True)
time.sleep(60)
"""


class Writer:
    def __init__(self, path: Path, mb: int, *, unlink: bool = False) -> None:
        argv = ["/usr/bin/python3", "-I", "-S", "-c", WRITER, str(path), str(mb)] + (["x"] if unlink else [])
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)

    def wait_done(self) -> None:
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline() == "done\n"

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


class Breaches:
    """on_exceeded for the tests: records, and stops the writer at once as the daemon would."""

    def __init__(self) -> None:
        self.seen: list[WriteBreach] = []
        self.event = threading.Event()
        self.victim: Writer | None = None

    def __call__(self, breach: WriteBreach) -> None:
        if self.victim is not None:
            os.kill(self.victim.proc.pid, signal.SIGKILL)
        self.seen.append(breach)
        self.event.set()


@pytest.fixture
def poller() -> Iterator[Poller]:
    p = Poller()
    yield p
    p.close()


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "fs"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def workspace(tmpfs: Path) -> Path:
    ws = tmpfs / "workspace"
    ws.mkdir()
    return ws


def _allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


def test_a_run_writing_past_the_cap_is_reported_and_its_files_stay(workspace: Path, poller: Poller) -> None:
    guard = WorkspaceGuard(workspace, CAP, poller)
    assert guard.mode == "statvfs_scan" and "tmpfs" in guard.detail
    breaches = Breaches()
    watch = guard.watch(breaches)
    breaches.victim = writer = Writer(workspace / "big.bin", 400)
    try:
        assert breaches.event.wait(20), "the cap was never reported"
        writer.proc.wait(10)
    finally:
        writer.kill()
    report = watch.stop()
    assert report.exceeded and len(breaches.seen) == 1
    assert breaches.seen[0].cap_bytes == CAP and "MAX_WORKSPACE_WRITE_MB" in breaches.seen[0].detail
    written = _allocated(workspace / "big.bin")  # the file stays: it is the session's
    assert CAP < written < CAP + OVERSHOOT


def test_a_run_under_the_cap_is_left_alone(workspace: Path, poller: Poller) -> None:
    guard = WorkspaceGuard(workspace, CAP, poller)
    breaches = Breaches()
    watch = guard.watch(breaches)
    writer = Writer(workspace / "ok.bin", 40)
    try:
        writer.wait_done()
        report = watch.stop()
    finally:
        writer.kill()
    assert not breaches.seen and not report.exceeded
    assert 40 * MIB <= report.added_bytes < 42 * MIB


def test_growth_outside_the_workspace_is_not_charged_to_the_run(workspace: Path, poller: Poller) -> None:
    guard = WorkspaceGuard(workspace, CAP, poller)
    breaches = Breaches()
    watch = guard.watch(breaches)
    outsider = Writer(workspace.parent / "not-the-workspace.bin", 100)  # same filesystem
    own = Writer(workspace / "mine.bin", 40)
    try:
        outsider.wait_done()
        own.wait_done()
        assert not breaches.event.wait(0.5)
        more = Writer(workspace / "more.bin", 30)  # 70 MiB of its own now: over
        breaches.victim = more
        assert breaches.event.wait(10)
    finally:
        for w in (outsider, own):
            w.kill()
        more.kill()
    assert watch.stop().exceeded
    assert CAP < breaches.seen[0].added_bytes < CAP + OVERSHOOT


def test_a_deleted_file_the_run_keeps_open_still_counts(workspace: Path, poller: Poller) -> None:
    guard = WorkspaceGuard(workspace, CAP, poller)
    breaches = Breaches()
    writer: Writer | None = None
    watch = guard.watch(breaches, run_pids=lambda: [writer.proc.pid] if writer else [])
    breaches.victim = writer = Writer(workspace / "hidden.bin", 200, unlink=True)
    try:
        assert breaches.event.wait(20)
    finally:
        writer.kill()
    assert watch.stop().exceeded


def test_rewriting_old_files_is_charged_by_growth_not_size(workspace: Path, poller: Poller) -> None:
    old = workspace / "old.bin"
    Writer(old, 100).wait_done()  # before the run: 100 MiB already there
    guard = WorkspaceGuard(workspace, CAP, poller)
    breaches = Breaches()
    watch = guard.watch(breaches, baseline={"old.bin": _allocated(old)})
    appender = Writer(old, 10)
    try:
        appender.wait_done()
        report = watch.stop()
    finally:
        appender.kill()
    assert not report.exceeded and 10 * MIB <= report.added_bytes < 12 * MIB


def test_a_later_run_is_not_charged_for_what_an_earlier_one_wrote(workspace: Path, poller: Poller) -> None:
    guard = WorkspaceGuard(workspace, CAP, poller)
    first_breaches, second_breaches = Breaches(), Breaches()
    first = guard.watch(first_breaches)
    w1 = Writer(workspace / "first.bin", 50)
    w1.wait_done()
    second = guard.watch(second_breaches)  # starts after the first run's 50 MiB
    w2 = Writer(workspace / "second.bin", 30)
    try:
        w2.wait_done()
        assert not second_breaches.event.wait(0.3)
        assert first_breaches.event.wait(5)  # 80 MiB since the first run began
    finally:
        w1.kill()
        w2.kill()
    assert not second.stop().exceeded and first.stop().exceeded


def test_scan_mode_where_statvfs_means_nothing(tmp_path: Path, poller: Poller) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    guard = WorkspaceGuard(ws, 8 * MIB, poller, mode="scan", scan_interval=0.05)
    assert guard.mode == "scan" and "forced" in guard.detail
    breaches = Breaches()
    watch = guard.watch(breaches)
    writer = Writer(ws / "sub" / "x.bin", 0)  # the directory does not exist: no file
    writer.kill()
    (ws / "sub").mkdir()
    breaches.victim = writer = Writer(ws / "sub" / "x.bin", 40)
    try:
        assert breaches.event.wait(10)
    finally:
        writer.kill()
    assert watch.stop().exceeded


S3FS_MOUNTINFO = """\
22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw
90 22 0:50 / /workspace rw,nosuid,nodev - fuse.s3fs s3fs rw,user_id=0,group_id=0
91 22 0:51 / /data rw - tmpfs tmpfs rw,size=1024k
"""


def test_fuse_workspaces_are_scanned_not_statvfsed(tmp_path: Path) -> None:
    mode, why = detect_mode(Path("/workspace"), S3FS_MOUNTINFO)
    assert mode == "scan" and "fuse.s3fs" in why
    assert detect_mode(Path("/workspace/sub"), S3FS_MOUNTINFO)[0] == "scan"
    mode, why = detect_mode(tmp_path, S3FS_MOUNTINFO)  # under / (ext4) in that table
    assert mode == "statvfs_scan" and "ext4" in why
    assert detect_mode(Path("/data"), S3FS_MOUNTINFO)[0] == "statvfs"


def test_a_workspace_that_is_its_own_filesystem_needs_no_scan(tmpfs: Path, poller: Poller) -> None:
    guard = WorkspaceGuard(tmpfs, CAP, poller)
    assert guard.mode == "statvfs" and "of its own" in guard.detail
    breaches = Breaches()
    watch = guard.watch(breaches)
    breaches.victim = writer = Writer(tmpfs / "big.bin", 400)
    try:
        assert breaches.event.wait(20)
        writer.proc.wait(10)
    finally:
        writer.kill()
    assert watch.stop().exceeded
    assert CAP < _allocated(tmpfs / "big.bin") < CAP + OVERSHOOT
