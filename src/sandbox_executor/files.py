"""Workspace files for the file routes and the MCP tools, confined to the workspace.

Lookups never follow a link (workspace_paths.py). Files are opened ``O_PATH`` first and
checked with fstat, so FIFOs, sockets and devices are refused without ever being opened
(opening a FIFO could block, opening a device could act on it). Uploads go to a temporary
name in the target directory, owned by the sandbox user, and are renamed over the target
once complete: a reader sees the old file or the whole new one, never part of it. Reads
and writes stream in bounded chunks off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import secrets
import stat
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from .artifacts import guess_mime
from .config import Settings
from .errors import Conflict, PathRefused, PayloadTooLarge
from .workspace_paths import DIR_FLAGS, Beneath, EntryType, entry_type, split_path

READ_CHUNK = 256 * 1024
WRITE_BATCH = 1024 * 1024
MAX_LIST_ENTRIES = 10_000
_TEMP_PREFIX = ".upload-"


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class FileEntry:
    name: str
    path: str
    type: EntryType
    size: int
    mtime: str  # ISO 8601, UTC


@dataclass(frozen=True)
class Listing:
    path: str
    entries: list[FileEntry]
    truncated: bool  # more than max_list_entries entries (or names that are not text)


@dataclass(frozen=True)
class Stored:
    """What an upload left: the file, and whether it is new (else it replaced one)."""

    file: FileEntry
    created: bool


@dataclass
class OpenedFile:
    """A regular file opened for reading; ``chunks()`` streams it and closes it."""

    fd: int
    path: str
    size: int
    mtime: str
    content_type: str

    async def chunks(self, chunk_size: int = READ_CHUNK) -> AsyncIterator[bytes]:
        """At most ``size`` bytes (the size announced as Content-Length), then close."""
        offset = 0
        try:
            while offset < self.size:
                data = await asyncio.to_thread(os.pread, self.fd, min(chunk_size, self.size - offset), offset)
                if not data:
                    break  # shrunk while we read: the response ends short (and says so)
                offset += len(data)
                yield data
        finally:
            self.close()

    async def read_all(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        # A response that never started (client gone first) never ran chunks()' finally.
        self.close()


class WorkspaceFiles:
    """Read, list and write files under ``root`` without following anything planted there."""

    def __init__(
        self,
        root: str | Path,
        max_upload_bytes: int,
        owner: tuple[int, int] | None = None,
        max_list_entries: int = MAX_LIST_ENTRIES,
    ) -> None:
        self.root = str(root)
        self.max_upload_bytes = max_upload_bytes
        self.owner = owner  # uid/gid given to what we create (the sandbox user's, as root)
        self.max_list_entries = max_list_entries
        self.paths = Beneath(self.root)

    @classmethod
    def from_settings(cls, settings: Settings) -> WorkspaceFiles:
        owner = settings.sandbox_ids() if settings.runs_as_root else None
        return cls(settings.workspace_dir, settings.max_upload_bytes, owner)

    # ------------------------------------------------------------------ read
    def open_file(self, path: str) -> OpenedFile:
        """Open a regular file for reading (PathRefused for anything else)."""
        parts = split_path(path)
        rootfd = self.paths.root_fd()
        try:
            handle = self.paths.open(rootfd, parts, os.O_PATH, path)
        finally:
            os.close(rootfd)
        try:
            st = os.fstat(handle)
            self._require_regular(st.st_mode, path)
            # Reopening our own O_PATH descriptor through procfs reaches exactly the inode
            # we checked, whatever happened to the name since.
            fd = os.open(f"/proc/self/fd/{handle}", os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
        finally:
            os.close(handle)
        try:
            st2 = os.fstat(fd)
            if (st2.st_dev, st2.st_ino) != (st.st_dev, st.st_ino) or not stat.S_ISREG(st2.st_mode):
                raise PathRefused(f"Path refused: {path[:256]} changed while it was opened.")
            head = os.pread(fd, 2048, 0)
            return OpenedFile(
                fd, "/".join(parts), st2.st_size, _iso(st2.st_mtime), guess_mime(parts[-1], head)
            )
        except BaseException:
            os.close(fd)
            raise

    @staticmethod
    def _require_regular(mode: int, path: str) -> None:
        kind = entry_type(mode)
        if kind == "directory":
            raise Conflict(
                f"{path[:256]} is a directory.", solution="List it with GET /files?path=DIR instead."
            )
        if kind != "file":
            raise PathRefused(
                f"Path refused: {path[:256]} is a {kind}, not a regular file.",
                detail={"path": path[:256], "reason": kind},
            )

    # ------------------------------------------------------------------ list
    def list_dir(self, path: str = "") -> Listing:
        parts = split_path(path, allow_root=True)
        rootfd = self.paths.root_fd()
        try:
            dirfd = self.paths.open(rootfd, parts, os.O_RDONLY | os.O_DIRECTORY, path)
        finally:
            os.close(rootfd)
        prefix = "/".join(parts)
        entries: list[FileEntry] = []
        truncated = False
        try:
            with os.scandir(dirfd) as scan:
                for item in scan:
                    if len(entries) >= self.max_list_entries:
                        truncated = True
                        break
                    try:
                        item.name.encode("utf-8")
                        st = item.stat(follow_symlinks=False)
                    except (UnicodeEncodeError, OSError):
                        truncated = True  # a name JSON cannot carry, or gone meanwhile
                        continue
                    rel = f"{prefix}/{item.name}" if prefix else item.name
                    entries.append(
                        FileEntry(item.name, rel, entry_type(st.st_mode), st.st_size, _iso(st.st_mtime))
                    )
        finally:
            os.close(dirfd)
        entries.sort(key=lambda e: e.name)
        return Listing(prefix, entries, truncated)

    # ------------------------------------------------------------------ write
    async def write(self, path: str, chunks: AsyncIterable[bytes]) -> Stored:
        """Store ``chunks`` at ``path`` (parents created): all of it, or nothing."""
        parts = split_path(path)
        rootfd = self.paths.root_fd()
        try:
            parent = self._make_parents(rootfd, parts, path)
        finally:
            os.close(rootfd)
        try:
            existed = self._check_target(parent, parts[-1], path)
            return Stored(await self._write_into(parent, parts, chunks), created=not existed)
        finally:
            os.close(parent)

    async def write_bytes(self, path: str, data: bytes) -> Stored:
        async def one() -> AsyncIterator[bytes]:
            yield data

        return await self.write(path, one())

    def _make_parents(self, rootfd: int, parts: tuple[str, ...], path: str) -> int:
        fd = os.dup(rootfd)
        try:
            for index, part in enumerate(parts[:-1]):
                try:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o755, dir_fd=fd)
                        created = os.open(part, DIR_FLAGS, dir_fd=fd)
                        if self.owner is not None:
                            os.fchown(created, *self.owner)
                        os.close(created)
                    fd, old = os.open(part, DIR_FLAGS, dir_fd=fd), fd
                except OSError as exc:
                    raise self.paths.refusal(exc, rootfd, parts[: index + 1], path) from None
                os.close(old)
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _check_target(self, parent: int, name: str, path: str) -> bool:
        """Whether a regular file is there to be replaced (nothing there: False)."""
        # rename() replaces a link or special file without following it; refusing them
        # anyway keeps one rule for every route: no path through or onto a link.
        try:
            mode = os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(mode):
            raise Conflict(f"{path[:256]} is a directory.", solution="Upload to a file path.")
        if not stat.S_ISREG(mode):
            self._require_regular(mode, path)
        return True

    async def _write_into(
        self, parent: int, parts: tuple[str, ...], chunks: AsyncIterable[bytes]
    ) -> FileEntry:
        temp = f"{_TEMP_PREFIX}{secrets.token_hex(8)}.part"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(temp, flags, 0o644, dir_fd=parent)
        renamed = False
        try:
            if self.owner is not None:
                os.fchown(fd, *self.owner)
            total = 0
            batch = bytearray()
            async for chunk in chunks:
                total += len(chunk)
                if total > self.max_upload_bytes:
                    raise PayloadTooLarge(
                        f"The upload exceeds {self.max_upload_bytes} bytes (MAX_UPLOAD_BYTES).",
                        solution="Upload a smaller file, or raise MAX_UPLOAD_BYTES.",
                    )
                batch += chunk
                if len(batch) >= WRITE_BATCH:
                    await asyncio.to_thread(_write_all, fd, bytes(batch))
                    batch.clear()
            if batch:
                await asyncio.to_thread(_write_all, fd, bytes(batch))
            st = os.fstat(fd)
            os.rename(temp, parts[-1], src_dir_fd=parent, dst_dir_fd=parent)
            renamed = True
            return FileEntry(parts[-1], "/".join(parts), "file", st.st_size, _iso(st.st_mtime))
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise PayloadTooLarge(
                    "The workspace has no room for this file.", detail=exc.strerror
                ) from None
            if exc.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                raise Conflict(f"{'/'.join(parts)[:256]} became a directory meanwhile.") from None
            raise
        finally:
            os.close(fd)
            if not renamed:
                with contextlib.suppress(OSError):
                    os.unlink(temp, dir_fd=parent)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
