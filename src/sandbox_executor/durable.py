"""Atomic and durable file replacement, for the outbox and the dependency manifests.

After :func:`atomic_write` returns, readers see the whole new content or the old one,
never a part, and the new content survives a crash or a power loss: write + fsync to a
temporary name beside the file, rename over it, fsync the directory.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

TMP_SUFFIX = ".tmp"


def temp_path(path: Path) -> Path:
    """Where :func:`atomic_write` stages ``path``: hidden, named after this process.

    A leftover with another pid in its name is from an interrupted write and can go.
    """
    return path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")


def fsync_dir(path: Path) -> None:
    """Make the entries of directory ``path`` (new names, renames, removals) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` atomically and durably; the file gets ``mode``."""
    tmp = temp_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)
