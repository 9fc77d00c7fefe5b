"""Where the sandbox's pip comes from: the daemon's own pip package, compiled once.

The pip package of the daemon's environment (pinned in pyproject) is copied once under the
store's root with bytecode for the sandbox's interpreter, and bound read-only into pip's
sandbox; see docs/DEPENDENCIES.md.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import secrets
import shutil
import subprocess
from pathlib import Path

import structlog

from ..config import Settings
from .fs import remove_tree, seal_tree

log = structlog.get_logger(__name__)


def find_pip(settings: Settings) -> tuple[str | None, list[str]]:
    """Where pip comes from: (host package dir to bind, or None) and the interpreter argv.

    Prefers the pip package of the daemon's own environment (pinned in pyproject), bound
    read-only and run by the sandbox's interpreter; falls back to that interpreter's
    ``-m pip`` (e.g. Debian's python3-pip).
    """
    spec = importlib.util.find_spec("pip")
    if spec is not None and spec.submodule_search_locations:
        pip_dir = os.path.realpath(next(iter(spec.submodule_search_locations)))
        if os.path.isfile(os.path.join(pip_dir, "__main__.py")):
            return pip_dir, []
    return None, [settings.python_binary, "-I", "-m", "pip"]


def compiled_pip_copy(pip_dir: str, root: Path, python: str) -> str | None:
    """A read-only copy of ``pip_dir`` under ``root`` with bytecode for ``python``.

    The daemon's pip has no .pyc for the sandbox's interpreter (it is never imported here)
    and the sandbox cannot write any, so every install would compile pip's ~450 modules
    again (about half of a one-wheel install). Compiled once by the daemon from the trusted
    source; returns None (bind the original) when that fails.
    """
    try:
        version = importlib.metadata.version("pip")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    key = f"pip-runtime-{version}-{hash_path(pip_dir)}"
    final = root / key
    if (final / ".complete").is_file():
        return str(final / "pip")
    tmp = root / f".{key}.tmp-{secrets.token_hex(4)}"
    try:
        shutil.copytree(pip_dir, tmp / "pip", ignore=shutil.ignore_patterns("__pycache__"))
        done = subprocess.run(
            [python, "-I", "-m", "compileall", "-q", "-j", "0", str(tmp / "pip")],
            capture_output=True,
            timeout=300,
            check=False,
        )
        if done.returncode != 0:
            raise OSError(f"compileall failed: {done.stdout[-500:]!r}")
        seal_tree(tmp, None)
        (tmp / ".complete").write_text(version)
        for old in root.glob("pip-runtime-*"):
            remove_tree(old)
        os.rename(tmp, final)
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("dependency_pip_compile_failed", error=str(exc))
        remove_tree(tmp)
        return None
    return str(final / "pip")


def hash_path(path: str) -> str:
    """A short stable tag for a path (a different daemon pip gets a different copy)."""
    return hashlib.sha256(os.fsencode(path)).hexdigest()[:12]
