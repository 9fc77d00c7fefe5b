"""Workspace file access against hostile trees: planted links at every depth, FIFOs,
sockets, device nodes, traversal, and links swapped in while the daemon walks.

Every test runs twice: with openat2 (this kernel has it) and with the per-component
O_NOFOLLOW walk used where openat2 is missing or refused by seccomp.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import random
import shutil
import socket
import stat
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from sandbox_executor.config import Settings
from sandbox_executor.engine import Engine
from sandbox_executor.errors import (
    Conflict,
    ExecutorError,
    NotFound,
    PathRefused,
    PayloadTooLarge,
)
from sandbox_executor.files import READ_CHUNK, WorkspaceFiles
from sandbox_executor.models import ExecuteRequest
from sandbox_executor.workspace_paths import NAME_MAX, openat2_beneath

IS_ROOT = os.geteuid() == 0
SANDBOX = (65534, 65534)
SECRET = b"SECRET-OUTSIDE-THE-WORKSPACE"


@pytest.fixture
def outside() -> Iterator[Path]:
    """A directory outside the workspace that mirrors its layout, full of secrets."""
    path = Path(tempfile.mkdtemp(prefix="sbx-outside-"))
    (path / "b" / "c").mkdir(parents=True)
    for rel in ("f", "b/f", "b/c/f", "secret"):
        (path / rel).write_bytes(SECRET)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def ws() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="sbx-files-"))
    path.chmod(0o755)
    if IS_ROOT:
        os.chown(path, *SANDBOX)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(params=["openat2", "walk"])
def files(request: pytest.FixtureRequest, ws: Path) -> WorkspaceFiles:
    wf = WorkspaceFiles(ws, max_upload_bytes=1024 * 1024, owner=SANDBOX if IS_ROOT else None)
    wf.paths.use_openat2 = request.param == "openat2"
    return wf


async def chunked(data: bytes, rng: random.Random) -> AsyncIterator[bytes]:
    pos = 0
    while pos < len(data):
        size = rng.randint(1, 100_000)
        yield data[pos : pos + size]
        pos += size
        await asyncio.sleep(0)


def leftovers(root: Path) -> list[str]:
    return [str(p) for p in root.rglob(".upload-*")]


# ---------------------------------------------------------------------- round trips
@pytest.mark.parametrize("size", [0, 1, 2047, READ_CHUNK + 1, 1024 * 1024])
async def test_upload_and_download_round_trip_bytes_exactly(
    files: WorkspaceFiles, ws: Path, size: int
) -> None:
    rng = random.Random(size)
    data = rng.randbytes(size)
    stored = await files.write("in/deep/er/blob.bin", chunked(data, rng))
    entry = stored.file
    assert (entry.path, entry.size, entry.type, stored.created) == ("in/deep/er/blob.bin", size, "file", True)
    assert (ws / "in/deep/er/blob.bin").read_bytes() == data
    opened = files.open_file("in/deep/er/blob.bin")
    assert opened.size == size
    received = [chunk async for chunk in opened.chunks()]
    assert b"".join(received) == data
    assert all(len(c) <= READ_CHUNK for c in received)
    assert opened.fd == -1, "streaming to the end closes the file"
    assert leftovers(ws) == []


async def test_created_files_and_directories_belong_to_the_sandbox_user(
    files: WorkspaceFiles, ws: Path
) -> None:
    await files.write_bytes("new/dir/file.txt", b"hello")
    for rel in ("new", "new/dir", "new/dir/file.txt"):
        st = (ws / rel).stat()
        if IS_ROOT:
            assert (st.st_uid, st.st_gid) == SANDBOX, rel
    assert stat.S_IMODE((ws / "new/dir/file.txt").stat().st_mode) == 0o644


async def test_upload_replaces_an_existing_file_atomically(files: WorkspaceFiles, ws: Path) -> None:
    (ws / "f.txt").write_bytes(b"old")
    reader = open(ws / "f.txt", "rb")  # held open across the replacement
    assert not (await files.write_bytes("f.txt", b"new content")).created
    assert reader.read() == b"old", "the old inode is untouched: no partial file ever existed"
    reader.close()
    assert (ws / "f.txt").read_bytes() == b"new content"


async def test_content_type_comes_from_the_artifact_detection(files: WorkspaceFiles) -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
    await files.write_bytes("img.dat", png)
    await files.write_bytes("notes.txt", "héllo\n".encode())
    await files.write_bytes("data.json", b'{"a": 1}')
    assert files.open_file("img.dat").content_type == "image/png"
    assert files.open_file("notes.txt").content_type == "text/plain"
    assert files.open_file("data.json").content_type == "application/json"


async def test_over_the_cap_nothing_is_written(files: WorkspaceFiles, ws: Path) -> None:
    (ws / "keep.bin").write_bytes(b"previous")
    with pytest.raises(PayloadTooLarge):
        await files.write("keep.bin", chunked(b"x" * (1024 * 1024 + 1), random.Random(1)))
    assert (ws / "keep.bin").read_bytes() == b"previous"
    assert leftovers(ws) == []


async def test_an_upload_interrupted_midway_leaves_nothing(files: WorkspaceFiles, ws: Path) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b"partial" * 1000
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await files.write("x/partial.bin", broken())
    assert not (ws / "x/partial.bin").exists()
    assert leftovers(ws) == []


def test_an_opened_file_never_streamed_is_closed_when_dropped(ws: Path) -> None:
    (ws / "f").write_bytes(b"x")
    opened = WorkspaceFiles(ws, 10).open_file("f")
    fd = opened.fd
    assert os.fstat(fd)
    del opened
    with pytest.raises(OSError) as closed:
        os.fstat(fd)
    assert closed.value.errno == errno.EBADF


async def test_a_download_is_at_most_the_size_announced(files: WorkspaceFiles, ws: Path) -> None:
    (ws / "growing.log").write_bytes(b"a" * 100)
    opened = files.open_file("growing.log")
    with open(ws / "growing.log", "ab") as fh:
        fh.write(b"b" * 1000)
    assert await opened.read_all() == b"a" * 100


# ---------------------------------------------------------------------- listing
async def test_listing_reports_name_size_mtime_and_type(
    files: WorkspaceFiles, ws: Path, outside: Path
) -> None:
    (ws / "d").mkdir()
    (ws / "d/file.txt").write_bytes(b"12345")
    (ws / "d/sub").mkdir()
    (ws / "d/link").symlink_to(outside / "secret")
    os.mkfifo(ws / "d/pipe")
    listing = files.list_dir("d")
    by_name = {e.name: e for e in listing.entries}
    assert [e.name for e in listing.entries] == sorted(by_name)
    assert {n: e.type for n, e in by_name.items()} == {
        "file.txt": "file",
        "sub": "directory",
        "link": "symlink",
        "pipe": "fifo",
    }
    assert by_name["file.txt"].size == 5 and by_name["file.txt"].path == "d/file.txt"
    assert by_name["file.txt"].mtime.endswith("Z")
    assert not listing.truncated
    root = files.list_dir("")
    assert [e.name for e in root.entries] == ["d"] and files.list_dir(".").entries == root.entries


async def test_listing_is_capped_and_skips_names_json_cannot_carry(ws: Path) -> None:
    for n in range(30):
        (ws / f"f{n:02}").touch()
    os.close(os.open(os.path.join(os.fsencode(ws), b"bad-\xff"), os.O_CREAT | os.O_WRONLY, 0o644))
    capped = WorkspaceFiles(ws, 10, max_list_entries=10).list_dir("")
    assert len(capped.entries) == 10 and capped.truncated
    full = WorkspaceFiles(ws, 10).list_dir("")
    assert len(full.entries) == 30 and full.truncated  # the undecodable name is not listed


# ---------------------------------------------------------------------- refusals
BAD_PATHS = ["..", "../x", "a/../../etc/passwd", "/etc/passwd", "a\x00b", "a//b", "./a", "x" * (NAME_MAX + 1)]


@pytest.mark.parametrize("path", BAD_PATHS)
async def test_traversal_absolute_nul_and_long_names_are_refused(files: WorkspaceFiles, path: str) -> None:
    with pytest.raises(PathRefused):
        files.open_file(path)
    with pytest.raises(PathRefused):
        await files.write_bytes(path, b"x")
    if path not in ("",):
        with pytest.raises(PathRefused):
            files.list_dir(path)


async def test_the_longest_legal_name_works(files: WorkspaceFiles) -> None:
    name = "n" * NAME_MAX
    await files.write_bytes(f"d/{name}", b"long")
    assert await files.open_file(f"d/{name}").read_all() == b"long"


@pytest.mark.parametrize("depth", [0, 1, 2, 3])
async def test_a_symlink_planted_at_any_depth_is_never_followed(
    files: WorkspaceFiles, ws: Path, outside: Path, depth: int
) -> None:
    # ws/a/b/c/f with component `depth` of (a, b, c, f) replaced by a link to outside.
    real = ["a", "b", "c", "f"]
    current = ws
    for part in real[:depth]:
        current = current / part
        current.mkdir()
    target = outside / "/".join(real[depth + 1 :]) if depth < 3 else outside / "secret"
    if depth == 0:
        target = outside
    (current / real[depth]).symlink_to(target if depth else outside, target_is_directory=depth < 3)
    path = "a/b/c/f"
    with pytest.raises(PathRefused) as info:
        files.open_file(path)
    assert info.value.detail["reason"] == "symlink"
    if depth < 3:
        with pytest.raises(PathRefused):
            files.list_dir("/".join(real[: depth + 1]))
    with pytest.raises(PathRefused):
        await files.write_bytes(path, b"overwritten?")
    with pytest.raises(PathRefused):
        await files.write_bytes("a/b/c/new-file", b"created?") if depth < 3 else files.open_file(path)
    for rel in ("f", "b/f", "b/c/f", "secret"):
        assert (outside / rel).read_bytes() == SECRET
    assert not any(p.name.startswith("new-file") for p in outside.rglob("*"))
    assert leftovers(ws) == [] and leftovers(outside) == []


async def test_a_dangling_link_is_not_a_way_to_create_files_elsewhere(
    files: WorkspaceFiles, ws: Path
) -> None:
    elsewhere = Path(tempfile.mkdtemp(prefix="sbx-elsewhere-"))
    try:
        (ws / "out").symlink_to(elsewhere / "created-by-daemon")
        with pytest.raises(PathRefused):
            await files.write_bytes("out", b"x")
        with pytest.raises(PathRefused):
            files.open_file("out")
        assert list(elsewhere.iterdir()) == []
    finally:
        shutil.rmtree(elsewhere)


async def test_a_fifo_is_refused_without_being_opened(files: WorkspaceFiles, ws: Path) -> None:
    os.mkfifo(ws / "pipe")
    started = time.monotonic()
    with pytest.raises(PathRefused) as info:
        files.open_file("pipe")
    assert time.monotonic() - started < 1
    assert info.value.detail["reason"] == "fifo"
    # Had we opened its read end, a writer would now find a reader; it finds none.
    with pytest.raises(OSError) as no_reader:
        os.open(ws / "pipe", os.O_WRONLY | os.O_NONBLOCK)
    assert no_reader.value.errno == errno.ENXIO
    with pytest.raises(PathRefused):
        await files.write_bytes("pipe", b"x")
    assert stat.S_ISFIFO((ws / "pipe").lstat().st_mode)


async def test_a_socket_is_refused(files: WorkspaceFiles, ws: Path) -> None:
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(ws / "sock"))
    try:
        with pytest.raises(PathRefused) as info:
            files.open_file("sock")
        assert info.value.detail["reason"] == "socket"
    finally:
        server.close()


@pytest.mark.skipif(not IS_ROOT, reason="mknod needs root")
@pytest.mark.parametrize(
    ("kind", "major", "minor"), [(stat.S_IFCHR, 1, 5), (stat.S_IFCHR, 1, 3), (stat.S_IFBLK, 7, 0)]
)
async def test_device_nodes_are_refused(
    files: WorkspaceFiles, ws: Path, kind: int, major: int, minor: int
) -> None:
    os.mknod(ws / "dev", kind | 0o666, os.makedev(major, minor))
    with pytest.raises(PathRefused) as info:
        files.open_file("dev")
    assert info.value.detail["reason"] == "device"
    with pytest.raises(PathRefused):
        await files.write_bytes("dev", b"x")
    assert [e.type for e in files.list_dir("").entries] == ["device"]


async def test_directories_missing_files_and_non_directories(files: WorkspaceFiles, ws: Path) -> None:
    (ws / "dir").mkdir()
    (ws / "file").write_bytes(b"x")
    with pytest.raises(Conflict):
        files.open_file("dir")
    with pytest.raises(Conflict):
        await files.write_bytes("dir", b"x")
    with pytest.raises(NotFound):
        files.open_file("missing")
    with pytest.raises(NotFound):
        files.list_dir("missing/deeper")
    with pytest.raises(Conflict):
        files.list_dir("file")
    with pytest.raises(Conflict):
        files.open_file("file/below")
    with pytest.raises(Conflict):
        await files.write_bytes("file/below", b"x")


def test_openat2_itself_refuses_links_and_escapes(ws: Path, outside: Path) -> None:
    (ws / "link").symlink_to(outside)
    root = os.open(ws, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for path, code in (("link/f", errno.ELOOP), ("link", errno.ELOOP), ("../x", errno.EXDEV)):
            with pytest.raises(OSError) as info:
                openat2_beneath(root, path, os.O_RDONLY)
            assert info.value.errno == code, path
    finally:
        os.close(root)


# ---------------------------------------------------------------------- races
_libc = ctypes.CDLL(None, use_errno=True)
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def exchange(a: Path, b: Path) -> None:
    """renameat2(RENAME_EXCHANGE): both names always exist, their inodes trade places."""
    if _libc.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def swapper(ws: Path, stop: threading.Event, swaps: list[int]) -> None:
    """What hostile code does: flip a/b between a real directory and a link outside."""
    while not stop.is_set():
        exchange(ws / "a" / "b", ws / "a" / "b-other")
        swaps[0] += 1


async def test_a_directory_swapped_for_a_link_during_lookups_never_leaks(
    files: WorkspaceFiles, ws: Path, outside: Path
) -> None:
    (ws / "a" / "b").mkdir(parents=True)
    (ws / "a" / "b" / "f").write_bytes(b"inside")
    (ws / "a" / "b-other").symlink_to(outside / "b")
    stop = threading.Event()
    swaps = [0]
    thread = threading.Thread(target=swapper, args=(ws, stop, swaps), daemon=True)
    thread.start()
    outcomes: dict[str, int] = {}
    try:
        deadline = time.monotonic() + 3
        n = 0
        while time.monotonic() < deadline:
            n += 1
            try:
                data = await files.open_file("a/b/f").read_all()
                assert data == b"inside"
                outcomes["read"] = outcomes.get("read", 0) + 1
                names = [e.name for e in files.list_dir("a/b").entries]
                assert "c" not in names, names  # the outside directory's listing never shows
                await files.write_bytes(f"a/b/new{n}", b"planted?")
                outcomes["wrote"] = outcomes.get("wrote", 0) + 1
            except (PathRefused, NotFound, Conflict) as exc:
                outcomes[type(exc).__name__] = outcomes.get(type(exc).__name__, 0) + 1
    finally:
        stop.set()
        thread.join(5)
    assert sorted(p.name for p in (outside / "b").iterdir()) == ["c", "f"], "nothing was written outside"
    assert (outside / "b" / "f").read_bytes() == SECRET
    assert outcomes.get("read", 0) > 0 and outcomes.get("PathRefused", 0) > 0, outcomes
    assert swaps[0] > 1000 and thread.is_alive() is False


# ---------------------------------------------------------------------- planted by real code
@pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap")
async def test_links_planted_by_sandboxed_code_are_refused(files: WorkspaceFiles, ws: Path) -> None:
    code = """
import os


def handler(event):
    plant()


def plant():
    os.makedirs("d/e", exist_ok=True)
    os.symlink("/etc/shadow", "shadow")
    os.symlink("/", "root")
    os.symlink("../../..", "d/e/up")
    os.symlink("/proc/self/root/etc/hostname", "d/magic")
    os.mkfifo("d/fifo")
    with open("d/e/ok.txt", "w") as f:
        f.write("written in the sandbox")
"""
    settings = Settings(
        workspace_path=str(ws), warm_pool_size=0, sandbox_uid=SANDBOX[0], sandbox_gid=SANDBOX[1]
    )
    result = await Engine(settings).execute_once(
        ExecuteRequest(execution_id="plant", code=code, language="python", timeout=10)
    )
    assert result.status == "success", result.stderr
    assert await files.open_file("d/e/ok.txt").read_all() == b"written in the sandbox"
    for path in ("shadow", "root/etc/shadow", "d/e/up/etc/passwd", "d/magic", "d/fifo"):
        with pytest.raises(PathRefused):
            files.open_file(path)
    for path in ("root", "root/etc", "d/e/up"):
        with pytest.raises(PathRefused):
            files.list_dir(path)
    for path in ("shadow", "root/tmp/x", "d/e/up/tmp/x"):
        with pytest.raises(ExecutorError):
            await files.write_bytes(path, b"x")
    assert {e.name: e.type for e in files.list_dir("").entries} == {
        "d": "directory",
        "root": "symlink",
        "shadow": "symlink",
    }
