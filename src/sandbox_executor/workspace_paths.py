"""Looking up workspace-relative paths without ever following a link the code planted.

Every lookup starts from a descriptor of the workspace root and is either one
``openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`` or, where the
kernel or a seccomp profile lacks openat2, a walk of one ``O_NOFOLLOW`` component at a
time from descriptor to descriptor. A link anywhere on the path fails the lookup, one
swapped in while we walk included: what a held descriptor points at cannot be swapped.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from typing import Literal

from .errors import Conflict, NotFound, PathRefused

EntryType = Literal["file", "directory", "symlink", "fifo", "socket", "device", "other"]
NAME_MAX = 255
PATH_MAX = 4096

# openat2(2): the syscall number is shared by every Linux architecture but alpha.
_SYS_OPENAT2 = 437
_RESOLVE = 0x02 | 0x04 | 0x08  # NO_MAGICLINKS | NO_SYMLINKS | BENEATH
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class _OpenHow(ctypes.Structure):
    _fields_ = (("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64))


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def openat2_beneath(dirfd: int, path: str, flags: int) -> int:
    """openat2 confined to ``dirfd`` with no symbolic link followed anywhere."""
    how = _OpenHow(flags | os.O_CLOEXEC, 0, _RESOLVE)
    fd = _libc.syscall(
        ctypes.c_long(_SYS_OPENAT2),
        ctypes.c_int(dirfd),
        ctypes.c_char_p(os.fsencode(path)),
        ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
    )
    if fd < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), path)
    return int(fd)


def split_path(path: str, *, allow_root: bool = False) -> tuple[str, ...]:
    """The components of a workspace-relative path, or PathRefused (pure)."""

    def refuse(reason: str) -> PathRefused:
        return PathRefused(f"Path refused: {reason}.", detail={"path": path[:256], "reason": reason})

    if "\x00" in path:
        raise refuse("it contains a NUL byte")
    if path.startswith("/"):
        raise refuse("it is absolute; paths are relative to the workspace")
    try:
        encoded = os.fsencode(path)
    except UnicodeEncodeError:
        raise refuse("it is not valid text") from None
    if len(encoded) >= PATH_MAX:
        raise refuse(f"it is longer than {PATH_MAX - 1} bytes")
    parts = path.split("/")
    if parts[-1] == "":  # one trailing slash, as in "dir/"
        parts.pop()
    if parts in ([], ["."]):
        if allow_root:
            return ()
        raise refuse("it names the workspace itself, not a file in it")
    for part in parts:
        if part in ("", ".", ".."):
            raise refuse(f"it has a {part or 'empty'!r} component" if part else "it has an empty component")
        if len(os.fsencode(part)) > NAME_MAX:
            raise refuse(f"a component is longer than {NAME_MAX} bytes")
    return tuple(parts)


def entry_type(mode: int) -> EntryType:
    for test, name in (
        (stat.S_ISREG, "file"),
        (stat.S_ISDIR, "directory"),
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "device"),
        (stat.S_ISBLK, "device"),
    ):
        if test(mode):
            return name  # type: ignore[return-value]
    return "other"


class Beneath:
    """Lookups confined to ``root``; ``use_openat2`` is probed on first use."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.use_openat2: bool | None = None

    def root_fd(self) -> int:
        # The root is the operator's configuration, trusted (and followed) as such.
        return os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def _openat2_available(self, rootfd: int) -> bool:
        if self.use_openat2 is None:
            try:
                os.close(openat2_beneath(rootfd, ".", os.O_PATH))
                self.use_openat2 = True
            except OSError as exc:
                # ENOSYS: kernel before 5.6; EPERM: a seccomp profile that refuses it.
                self.use_openat2 = exc.errno not in (errno.ENOSYS, errno.EPERM)
        return self.use_openat2

    def open(self, rootfd: int, parts: tuple[str, ...], flags: int, path: str) -> int:
        """Open ``parts`` beneath ``rootfd`` (never through a link), mapping failures."""
        try:
            if not parts:
                return os.open(".", flags | os.O_CLOEXEC, dir_fd=rootfd)
            if self._openat2_available(rootfd):
                return openat2_beneath(rootfd, "/".join(parts), flags)
            fd = os.dup(rootfd)
            try:
                for part in parts[:-1]:
                    fd, old = os.open(part, DIR_FLAGS, dir_fd=fd), fd
                    os.close(old)
                return os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise self.refusal(exc, rootfd, parts, path, last_is_dir=bool(flags & os.O_DIRECTORY)) from None

    def refusal(
        self, exc: OSError, rootfd: int, parts: tuple[str, ...], path: str, *, last_is_dir: bool = True
    ) -> Exception:
        """The domain error for a failed lookup (lstat only words it: it decides nothing)."""
        detail = {"path": path[:256]}
        if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EXDEV):
            found = self._first_non_directory(rootfd, parts)
            where = "/".join(parts[: found[0] + 1])[:256] if found else path[:256]
            if found is not None and found[1] == "symlink":
                return PathRefused(
                    f"Path refused: {where} is a symbolic link; links are never followed.",
                    detail={**detail, "reason": "symlink"},
                )
            must_be_dirs = len(parts) if last_is_dir else len(parts) - 1
            if found is not None and exc.errno == errno.ENOTDIR and found[0] < must_be_dirs:
                # The request is well formed; the workspace holds a file where it names a directory.
                return Conflict(
                    f"{where} is not a directory.", detail=detail, solution="Name a path through directories."
                )
            # Whatever refused us is gone by now: something swapped a component meanwhile.
            return PathRefused(
                f"Path refused: {path[:256]} changed while it was looked up.",
                detail={**detail, "reason": "race"},
            )
        if exc.errno == errno.ENOENT:
            return NotFound(f"No such file or directory in the workspace: {path[:256]}.", detail=detail)
        if exc.errno == errno.ENAMETOOLONG:
            return PathRefused("Path refused: a name is too long.", detail={**detail, "reason": "too long"})
        if exc.errno in (errno.EACCES, errno.EPERM):
            return PathRefused(
                f"Path refused: {path[:256]} is not accessible.", detail={**detail, "reason": "access"}
            )
        return exc

    @staticmethod
    def _first_non_directory(rootfd: int, parts: tuple[str, ...]) -> tuple[int, EntryType] | None:
        fd = os.dup(rootfd)
        try:
            for index, part in enumerate(parts):
                try:
                    kind = entry_type(os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode)
                except OSError:
                    return None
                if kind != "directory":
                    return index, kind
                try:
                    fd, old = os.open(part, DIR_FLAGS, dir_fd=fd), fd
                except OSError:
                    return None
                os.close(old)
            return None
        finally:
            os.close(fd)
