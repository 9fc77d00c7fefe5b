"""File helpers for trees written by sandboxed code (pip and the builds it runs).

Such a tree may hold symlinks to anywhere, hard links, FIFOs, setuid bits and directories
without write permission: nothing here follows a link or trusts a mode.
"""

from __future__ import annotations

import contextlib
import ctypes
import email.parser
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
from packaging.utils import canonicalize_name

log = structlog.get_logger(__name__)

RENAME_EXCHANGE = 2


def read_installed(target: Path) -> list[tuple[str, str]]:
    """(name, version) of every distribution in ``target``, from its metadata files.

    Reads only regular files directly inside real ``*.dist-info`` / ``*.egg-info``
    directories and never follows a symlink: the tree was written by sandboxed code.
    """
    found: list[tuple[str, str]] = []
    try:
        entries = list(os.scandir(target))
    except OSError:
        return found
    for entry in entries:
        if entry.name.endswith(".dist-info"):
            meta = "METADATA"
        elif entry.name.endswith(".egg-info"):
            meta = "PKG-INFO"
        else:
            continue
        if not entry.is_dir(follow_symlinks=False):
            continue
        text = _read_regular(os.path.join(entry.path, meta), 256 * 1024)
        if text is None:
            continue
        headers = email.parser.HeaderParser().parsestr(text)
        name, version = headers.get("Name"), headers.get("Version")
        if name and version:
            found.append((str(name).strip(), str(version).strip()))
    return sorted(found, key=lambda item: canonicalize_name(item[0]))


def _read_regular(path: str, limit: int) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, limit).decode("utf-8", "replace")
    finally:
        os.close(fd)


def seal_tree(root: Path, owner: tuple[int, int] | None) -> None:
    """Make an installed tree plain and read-only for others: no setuid/setgid bits, no
    group/other write, readable by the sandbox user; owned by ``owner`` when given.

    Never follows symlinks and leaves multiply-linked files alone (a hard link could point
    at a file outside the tree).
    """
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in (*dirnames, *filenames):
            _seal_entry(os.path.join(dirpath, name), owner)
    _seal_entry(str(root), owner)


def _seal_entry(path: str, owner: tuple[int, int] | None) -> None:
    try:
        st = os.lstat(path)
    except OSError:
        return
    if stat.S_ISLNK(st.st_mode):
        if owner is not None:
            with contextlib.suppress(OSError):
                os.lchown(path, *owner)
        return
    if stat.S_ISDIR(st.st_mode):
        mode = 0o755
    elif stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
        mode = 0o755 if st.st_mode & 0o111 else 0o644
    elif stat.S_ISREG(st.st_mode):
        log.warning("dependency_tree_hardlink_skipped", path=path)
        return
    else:  # FIFOs, sockets: nothing a package needs
        with contextlib.suppress(OSError):
            os.unlink(path)
        return
    with contextlib.suppress(OSError):
        if owner is not None:
            os.lchown(path, *owner)
        os.chmod(path, mode)


def remove_tree(path: Path) -> None:
    """Delete a tree written by sandboxed code, even with unwritable directories inside."""

    def fix(func: Callable[..., Any], failed: str, exc_info: Any) -> None:
        parent = os.path.dirname(failed)
        with contextlib.suppress(OSError):
            os.chmod(parent, 0o700)
            if os.path.isdir(failed) and not os.path.islink(failed):
                os.chmod(failed, 0o700)
        with contextlib.suppress(OSError):
            func(failed)

    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.exists():
        shutil.rmtree(path, onerror=fix)


def rename_exchange(a: str, b: str) -> bool:
    """Atomically swap two paths (renameat2 RENAME_EXCHANGE); False when unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    rc = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), RENAME_EXCHANGE)
    return bool(rc == 0)


def chown_tree(path: Path, ids: tuple[int, int]) -> None:
    os.chown(path, *ids)
    for dirpath, dirnames, filenames in os.walk(path, followlinks=False):
        for name in (*dirnames, *filenames):
            with contextlib.suppress(OSError):
                os.lchown(os.path.join(dirpath, name), *ids)
