"""A private temporary directory per sandbox where no mount namespace gives it a /tmp.

At the landlock (and none) level a sandbox gets ``TMPDIR`` and ``HOME`` in a fresh
directory of its own (Landlock lets it write there and in the workspace only), made by
the daemon before the sandbox starts and removed once its whole process tree is gone.
The directories live in the daemon's temporary directory (``tempfile.gettempdir()``:
``TMPDIR``, else /tmp); what bounds their size is that file system (in the control
plane's Docker sessions a 512 MB tmpfs) and RLIMIT_FSIZE per file. Their names carry the
daemon's pid, so a daemon that was killed before it could remove them has them removed
by the next one (:func:`sweep`).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable
from typing import Any

PREFIX = "sandbox-tmp-"


def create(owner: tuple[int, int] | None = None, base: str | None = None) -> str:
    """A new empty directory (mode 0700), owned by ``owner`` when given (a root daemon)."""
    path = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=base)
    if owner is not None:
        os.chown(path, *owner)
    return path


def sweep(base: str | None = None) -> int:
    """Remove the directories of daemons that are gone (or of an earlier life of this pid,
    which has made none yet when it sweeps at start-up); how many were removed."""
    root = base or tempfile.gettempdir()
    removed = 0
    try:
        names = os.listdir(root)
    except OSError:
        return 0
    for name in names:
        pid = _daemon_pid(name)
        if pid is not None and (pid == os.getpid() or not _alive(pid)):
            remove(os.path.join(root, name))
            removed += 1
    return removed


def _daemon_pid(name: str) -> int | None:
    if not name.startswith(PREFIX):
        return None
    head = name[len(PREFIX) :].split("-", 1)[0]
    return int(head) if head.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def remove(path: str) -> None:
    """Remove what a sandbox left there: any depth, modes it took away restored, links
    never followed. Never raises: a leftover is logged by the caller's next attempt."""
    if not os.path.lexists(path):
        return
    try:
        shutil.rmtree(path, onerror=_restore_and_retry)
    except (OSError, RecursionError):
        # Python 3.11's rmtree recurses: a tree deeper than ~1000 levels needs rm(1),
        # which walks by descriptor at any depth.
        subprocess.run(
            ["rm", "-rf", "--one-file-system", "--", path],
            check=False,
            capture_output=True,
            timeout=300,
        )


def _restore_and_retry(func: Callable[..., Any], failed: str, _exc: Any) -> None:
    # The sandbox may have made a directory unreadable or unwritable (chmod 0): it is
    # ours (the same uid, or we are root), so give the rights back and try once more.
    parent = os.path.dirname(failed)
    for target in (parent, failed):
        try:
            st = os.lstat(target)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):
            os.chmod(target, stat.S_IRWXU)
    func(failed)
