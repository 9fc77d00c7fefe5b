"""Which workspace files a run created or modified, scanned without trusting the workspace.

The workspace is written by hostile code: symlinks are never followed (directories are
walked by file descriptor, files opened with O_NOFOLLOW), FIFOs and devices are skipped
without being opened, and scanning and hashing are capped so that a huge tree cannot stall
the daemon.
"""

from __future__ import annotations

import asyncio
import hashlib
import mimetypes
import os
import stat
from dataclasses import dataclass, field
from typing import Any, Literal

from .models import ArtifactDetail

# (mtime_ns, ctime_ns, size, inode) of a regular file; enough to notice any rewrite.
FileState = tuple[int, int, int, int]
Change = Literal["created", "modified"]
# Directory levels scanned below the workspace root (see snapshot()).
MAX_DEPTH = 128


@dataclass
class Snapshot:
    """Regular files under the workspace, by relative path."""

    files: dict[str, FileState] = field(default_factory=dict)
    truncated: bool = False


def _visible(name: str) -> bool:
    return not name.startswith(".")


def _valid_text(name: str) -> bool:
    # Names that are not valid UTF-8 (surrogate-escaped by os) or hold control characters
    # cannot travel in JSON paths faithfully; they are not reported.
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return not any(ord(ch) < 32 or ord(ch) == 127 for ch in name)


def snapshot(root: str, max_files: int) -> Snapshot:
    """Record every visible regular file under ``root`` (at most ``max_files`` entries)."""
    snap = Snapshot()
    seen = 0
    try:
        walker = os.fwalk(root, follow_symlinks=False)
        for dirpath, dirnames, filenames, dirfd in walker:
            # Directories count toward the cap as files do: a tree of empty directories
            # would otherwise be walked in full, twice, by every later run.
            seen += 1
            if seen > max_files:
                snap.truncated = True
                return snap
            # Hidden directories are pruned; so are names we could not report anyway.
            dirnames[:] = [d for d in dirnames if _visible(d) and _valid_text(d)]
            rel_dir = os.path.relpath(dirpath, root)
            # fwalk recurses once per level: a hostile deep tree would end in RecursionError
            # and fail every later run in this workspace. Deeper levels are not scanned.
            if rel_dir != "." and rel_dir.count("/") + 1 >= MAX_DEPTH and dirnames:
                dirnames[:] = []
                snap.truncated = True
            for name in filenames:
                seen += 1
                if seen > max_files:
                    snap.truncated = True
                    return snap
                if not (_visible(name) and _valid_text(name)):
                    continue
                try:
                    st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
                except OSError:
                    continue
                if not stat.S_ISREG(st.st_mode):
                    continue
                rel = name if rel_dir == "." else f"{rel_dir}/{name}"
                snap.files[rel] = (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)
    except OSError:
        pass
    return snap


# Slack for the kernel's coarse file timestamps (a jiffy behind the fine-grained clock).
TIMESTAMP_SLACK_NS = 20_000_000


# A workspace whose last scan found at most this many files is scanned on the event loop:
# that costs less (tens of microseconds) than the two thread hops of an executor call,
# which are ~1 ms of every run's latency on a busy 2-core machine.
_INLINE_SCAN_FILES = 200
_last_scan_size: dict[str, int] = {}


async def snapshot_soon(root: str, max_files: int) -> Snapshot:
    """:func:`snapshot` inline when the tree was small last time, else in a worker thread."""
    if _last_scan_size.get(root, _INLINE_SCAN_FILES + 1) <= _INLINE_SCAN_FILES:
        snap = snapshot(root, min(max_files, _INLINE_SCAN_FILES + 1))
        if not snap.truncated or max_files <= _INLINE_SCAN_FILES:
            _last_scan_size[root] = len(snap.files)
            return snap
    snap = await asyncio.get_running_loop().run_in_executor(None, snapshot, root, max_files)
    _last_scan_size[root] = len(snap.files)
    return snap


def changed_files(before: Snapshot, after: Snapshot, since_ns: int | None = None) -> list[tuple[str, Change]]:
    """Sorted (path, "created"|"modified") pairs: pure comparison of two snapshots.

    When ``before`` was cut short by its file cap, a path missing from it may simply not
    have been scanned; it then counts as created only if its ctime is not older than
    ``since_ns`` (the run's start on the wall clock), never from its absence alone.
    """
    changes: list[tuple[str, Change]] = []
    for path, state in after.files.items():
        old = before.files.get(path)
        if old is None:
            if before.truncated and since_ns is not None and state[1] < since_ns - TIMESTAMP_SLACK_NS:
                continue
            changes.append((path, "created"))
        elif old != state:
            changes.append((path, "modified"))
    changes.sort()
    return changes


def describe(root: str, changes: list[tuple[str, Change]], max_hash_bytes: int) -> list[ArtifactDetail]:
    """Size, MIME type and sha256 of each changed file, hashing at most ``max_hash_bytes``."""
    details: list[ArtifactDetail] = []
    budget = max_hash_bytes
    for path, change in changes:
        info = _inspect(root, path, budget)
        if info is None:
            continue
        size, digest, head = info
        if digest is not None:
            budget -= size
        details.append(
            ArtifactDetail(
                path=path, size=size, mime_type=guess_mime(path, head), sha256=digest, change=change
            )
        )
    return details


def _inspect(root: str, rel: str, budget: int) -> tuple[int, str | None, bytes] | None:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    parts = rel.split("/")
    fds: list[int] = []
    try:
        dirfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        fds.append(dirfd)
        for part in parts[:-1]:
            dirfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
            fds.append(dirfd)
        fd = os.open(parts[-1], flags, dir_fd=dirfd)
        fds.append(fd)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        with os.fdopen(os.dup(fd), "rb") as fh:
            head = fh.read(2048)
            if st.st_size > budget:
                return st.st_size, None, head
            digest = hashlib.sha256(head)
            remaining = budget - len(head)
            while remaining > 0:
                chunk = fh.read(min(1 << 20, remaining))
                if not chunk:
                    break
                digest.update(chunk)
                remaining -= len(chunk)
            return st.st_size, digest.hexdigest(), head
    except OSError:
        return None
    finally:
        for fd in fds:
            os.close(fd)


# puremagic also returns weak guesses (two bytes matching "Windows INI", a zip called a
# .docx); below this confidence the extension and the text heuristic are better evidence.
_MAGIC_MIN_CONFIDENCE = 0.5


def _magic_matches(path: str, head: bytes) -> list[Any]:
    if not head:
        return []
    try:
        import puremagic

        return list(puremagic.magic_string(head, filename=path))
    except Exception:  # detection is best effort ("could not identify" raises)
        return []


def guess_mime(path: str, head: bytes) -> str:
    """MIME type from content (puremagic), then the extension, then a text heuristic."""
    for match in _magic_matches(path, head):
        mime = str(getattr(match, "mime_type", "") or "")
        if mime and float(getattr(match, "confidence", 0.0)) >= _MAGIC_MIN_CONFIDENCE:
            return mime
    guessed, _ = mimetypes.guess_type(path, strict=False)
    if guessed:
        return guessed
    if not head:
        return "application/octet-stream" if path else "text/plain"
    try:
        head.decode("utf-8")
        return "text/plain"
    except UnicodeDecodeError:
        return "application/octet-stream"
