"""Session dependencies (POST /internal/session-config/sync): validated, sandboxed pip installs.

Layout on disk, with the default ``SANDBOX_VENV_PATH=/opt/sandbox-venv``::

    /opt/sandbox-venv              symlink -> /opt/sandbox-venv.d/v<N> (what sandboxes bind)
    /opt/sandbox-venv.d/v<N>/      one installed set (``pip --target``), never changed once live
    /opt/sandbox-venv.d/v<N>.json  its manifest: requirements, index URL, installed dists (0600)
    /opt/sandbox-venv.d/v<N>.retired  when it stopped being current
    /opt/sandbox-venv.d/pip-cache/ pip's cache (unless PIP_CACHE_DIR), owned by the sandbox uid
    /opt/sandbox-venv.d/scratch-<N>/  HOME and TMPDIR of one pip run, removed afterwards
    /opt/sandbox-venv.d/pip-runtime-<version>-<tag>/pip  pip, compiled once for the
                                   sandbox's python, bound read-only into pip's sandbox

Every sync installs the *whole* resulting set into a fresh ``v<N>`` (merge = previous
requirements plus the new ones, re-resolved together; the pip cache makes the repeated
downloads cheap) and then replaces the symlink atomically (symlink to a temporary name +
rename). A sandbox binds ``realpath(SANDBOX_VENV_PATH)`` when it starts, so it sees either
the old or the new complete tree, never a half-installed one; a failed install deletes its
``v<N>`` and leaves the symlink alone. Old trees stay on disk until every execution that
could have bound them has ended (``max_timeout_seconds`` + a margin after they were
replaced), because deleting a tree under a running sandbox would break its imports.

pip itself runs in its own bwrap sandbox: network shared (it must reach the index; note
that this includes the host's loopback, hence the executor's own port, which answers
nothing secret without a token and gets none), an empty environment apart from PATH, HOME,
TMPDIR, LANG and the CA bundle, the system directories read-only, pip's own package
read-only, and write access only to the new tree, the pip cache and its scratch directory.
It runs as the sandbox uid when the daemon is root, under rlimits, a timeout
(``DEPENDENCY_INSTALL_TIMEOUT_SECONDS``) and an output cap. So code that an sdist runs while
it is built sees none of the daemon's variables, files or processes. What such code writes
into its own target does end up importable, which is the point of installing it; it can
also write into the shared pip cache, which only this session's later installs read.

Concurrency: one sync at a time. A second request waits for the running one (so merges
apply in order) for at most ``lock_wait_seconds`` (20 s, below the control plane's 30 s
HTTP timeout), then gets 503 ``Executor.Busy`` with ``Retry-After``. Executions keep
running during an install and take no lock: one that starts during the switch binds one
complete tree or the other. After a switch ``on_change`` lets the warm pool drop sandboxes
that bound the old tree.

``install_location`` in answers is the path user code sees (``/opt/sandbox-venv``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import email.parser
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import resource
import secrets
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import structlog
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from pydantic import BaseModel, ConfigDict, Field

from .config import MIB, Settings
from .errors import ApiError, Busy, ShuttingDown, validation_error
from .runtimes import SANDBOX_VENV_MOUNT
from .sandbox import (
    Mount,
    SandboxSpec,
    build_bwrap_argv,
    host_system_mounts,
    installed_bwrap_supports,
    load_seccomp_program,
    memfd_with,
)
from .spawner import Spawner

log = structlog.get_logger(__name__)

MAX_ENTRY_LENGTH = 256
MAX_INDEX_URL_LENGTH = 2048
# Kept of pip's combined output; the error body carries the last ERROR_TAIL_CHARS of it.
OUTPUT_TAIL_BYTES = 64 * 1024
ERROR_TAIL_CHARS = 4000
LOCK_WAIT_SECONDS = 20.0
# At shutdown, how long a killed pip gets to be reaped and its tree removed.
STOP_WAIT_SECONDS = 0.5
RETRY_AFTER_SECONDS = 10
# A replaced tree is deleted once no execution that started before the switch can still run.
RETIRE_MARGIN_SECONDS = 60
# Names pip would read as a local archive path rather than a project name.
_ARCHIVE_SUFFIXES = (
    ".whl",
    ".zip",
    ".tar",
    ".tar.gz",
    ".tgz",
    ".tar.bz2",
    ".tbz",
    ".tar.xz",
    ".txz",
    ".tlz",
    ".tar.lz",
    ".tar.lzma",
)
# Printable ASCII only: no newlines, tabs, NULs or look-alike Unicode in an entry.
_PRINTABLE = re.compile(r"^[\x20-\x7e]+$")
_VERSION_DIR = re.compile(r"^v(\d+)$")

# Paths inside the pip sandbox.
PIP_RUNTIME_MOUNT = "/opt/pip-runtime"
PIP_CACHE_MOUNT = "/var/cache/pip"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
RENAME_EXCHANGE = 2


class SyncRequest(BaseModel):
    """Body of POST /internal/session-config/sync (CONTRACT.md section 1)."""

    model_config = ConfigDict(extra="ignore")

    session_id: str | None = None
    language_runtime: str = "python3.11"
    python_package_index_url: str = "https://pypi.org/simple"
    dependencies: list[str] = Field(default_factory=list)
    sync_mode: Literal["replace", "merge"] = "replace"


@dataclass
class Manifest:
    """What one installed tree holds and how it was made."""

    version: str
    requirements: dict[str, str]
    index_url: str | None
    installed: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": self.version,
                "requirements": self.requirements,
                "index_url": self.index_url,
                "installed": self.installed,
            },
            indent=1,
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        doc = json.loads(text)
        return cls(
            version=str(doc["version"]),
            requirements={str(k): str(v) for k, v in doc.get("requirements", {}).items()},
            index_url=doc.get("index_url"),
            installed=list(doc.get("installed", [])),
        )


@dataclass(frozen=True)
class PipOutcome:
    """How one pip run ended."""

    returncode: int | None
    output_tail: str
    timed_out: bool
    duration: float
    stopped: bool = False  # killed on request (shutdown), not for its own sake


# ---------------------------------------------------------------------------- validation
def normalize_requirement(entry: Any) -> tuple[str, str]:
    """Validate one dependency entry; return (canonical name, normalized PEP 508 string).

    Raises a 400 :class:`ApiError` for anything pip could read as an option, a path or a URL.
    """
    if not isinstance(entry, str):
        raise validation_error("Every dependency must be a string.", {"entry": repr(entry)[:100]})
    shown = entry[:100]
    text = entry.strip(" ")
    if not text:
        raise validation_error("A dependency entry is empty.", {"entry": shown})
    if len(text) > MAX_ENTRY_LENGTH:
        raise validation_error(
            f"A dependency entry is longer than {MAX_ENTRY_LENGTH} characters.", {"entry": shown}
        )
    if not _PRINTABLE.match(text):
        raise validation_error(
            "A dependency entry contains control, whitespace other than spaces, or non-ASCII characters.",
            {"entry": shown},
        )
    if text.startswith("-"):
        raise validation_error(
            "pip options are not accepted as dependencies.",
            {"entry": shown},
            "List requirement specifiers only, e.g. 'requests==2.31.0'; set the index with "
            "python_package_index_url.",
        )
    try:
        req = Requirement(text)
    except InvalidRequirement as exc:
        raise validation_error(
            "A dependency is not a valid PEP 508 requirement.", {"entry": shown, "reason": str(exc)}
        ) from exc
    if req.url:
        raise validation_error(
            "Direct URL requirements are not accepted.",
            {"entry": shown},
            "Name the project and publish it on the package index.",
        )
    name = canonicalize_name(req.name)
    # pip reads "x.whl" as a file; the canonical name ("x-whl") would not be, but refuse it.
    if req.name.lower().endswith(_ARCHIVE_SUFFIXES) or "/" in text or "\\" in text:
        raise validation_error("Local paths and archives are not accepted.", {"entry": shown})
    req.name = name
    return name, str(req)


def normalize_requirements(entries: Sequence[Any], max_entries: int) -> dict[str, str]:
    """Validate a list of entries; a later entry for the same project replaces an earlier one."""
    if len(entries) > max_entries:
        raise validation_error(f"Too many dependencies ({len(entries)}); at most {max_entries} are accepted.")
    result: dict[str, str] = {}
    for entry in entries:
        name, spec = normalize_requirement(entry)
        result.pop(name, None)
        result[name] = spec
    return result


def validate_index_url(url: str) -> str:
    """The index URL, if it is a plain http(s) URL with a host; else a 400."""
    if not url or len(url) > MAX_INDEX_URL_LENGTH or not _PRINTABLE.match(url) or " " in url:
        raise validation_error("python_package_index_url is empty, too long or has spaces.")
    parts = urlsplit(url)
    try:
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise validation_error("python_package_index_url is not a valid URL.") from exc
    if parts.scheme not in ("http", "https") or not host:
        raise validation_error(
            "python_package_index_url must be an http(s) URL with a host.",
            {"scheme": parts.scheme},
        )
    return url


def validate_runtime(language_runtime: str) -> None:
    """Only Python dependencies are managed; the installed set targets the sandbox's python."""
    if not re.fullmatch(r"python(3(\.\d{1,2})?)?", language_runtime or ""):
        raise validation_error(
            "language_runtime must name a Python runtime, e.g. 'python3.11'.",
            {"language_runtime": str(language_runtime)[:50]},
        )


def redact_url(url: str | None) -> str | None:
    """The URL without user info, for logs."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return parts._replace(netloc=f"***@{netloc}").geturl()


# ---------------------------------------------------------------------------- file system
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


def _rename_exchange(a: str, b: str) -> bool:
    """Atomically swap two paths (renameat2 RENAME_EXCHANGE); False when unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    rc = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), RENAME_EXCHANGE)
    return bool(rc == 0)


def _chown_tree(path: Path, ids: tuple[int, int]) -> None:
    os.chown(path, *ids)
    for dirpath, dirnames, filenames in os.walk(path, followlinks=False):
        for name in (*dirnames, *filenames):
            with contextlib.suppress(OSError):
                os.lchown(os.path.join(dirpath, name), *ids)


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


# ---------------------------------------------------------------------------- the store
class VenvStore:
    """The versioned trees behind ``SANDBOX_VENV_PATH`` and the symlink that selects one."""

    def __init__(self, settings: Settings) -> None:
        self.link = Path(os.path.abspath(settings.sandbox_venv_path))
        self.root = self.link.with_name(self.link.name + ".d")
        cache = settings.pip_cache_dir
        self.cache = Path(cache) if cache else self.root / "pip-cache"
        self.retire_after = settings.max_timeout_seconds + RETIRE_MARGIN_SECONDS

    def ensure_root(self) -> None:
        # 0755: the pip sandbox (another uid) must traverse it to reach its own directories.
        self.root.mkdir(parents=True, exist_ok=True, mode=0o755)

    def current_dir(self) -> Path | None:
        """The tree the symlink points at, if it is one of ours."""
        if not self.link.is_symlink():
            return None
        target = Path(os.path.realpath(self.link))
        if target.parent == Path(os.path.realpath(self.root)) and target.is_dir():
            return target
        return None

    def load_current(self) -> Manifest | None:
        current = self.current_dir()
        if current is None:
            if self.link.is_dir():  # a directory provisioned by the image, not by us
                when = _mtime_iso(self.link)
                installed = [_entry(n, v, when) for n, v in read_installed(self.link)]
                return Manifest("external", {}, None, installed)
            return None
        manifest_path = current.with_name(current.name + ".json")
        try:
            return Manifest.from_json(manifest_path.read_text("utf-8"))
        except (OSError, ValueError, KeyError):
            when = _mtime_iso(current)
            installed = [_entry(n, v, when) for n, v in read_installed(current)]
            return Manifest(current.name, {}, None, installed)

    def new_version(self) -> Path:
        numbers = [0]
        for entry in os.scandir(self.root):
            match = _VERSION_DIR.match(entry.name.split(".", 1)[0])
            if match:
                numbers.append(int(match.group(1)))
        path = self.root / f"v{max(numbers) + 1}"
        path.mkdir(mode=0o755)
        return path

    def write_manifest(self, path: Path, manifest: Manifest) -> None:
        tmp = path.with_name(f".{path.name}.json.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(manifest.to_json())
        os.replace(tmp, path.with_name(path.name + ".json"))

    def switch(self, new: Path) -> None:
        """Point the symlink at ``new`` atomically and mark the previous tree retired."""
        previous = self.current_dir()
        tmp_link = self.link.with_name(f".{self.link.name}.link-{secrets.token_hex(4)}")
        os.symlink(str(new), tmp_link)
        try:
            if self.link.is_dir() and not self.link.is_symlink():
                self._replace_directory(tmp_link)
            else:
                os.replace(tmp_link, self.link)
        finally:
            if tmp_link.is_symlink():
                tmp_link.unlink()
        if previous is not None and previous != new:
            self.mark_retired(previous)

    def _replace_directory(self, tmp_link: Path) -> None:
        # First switch over a real directory (e.g. created by the image): swap it with the
        # link in one step where the kernel can, and keep its contents aside, never deleted.
        aside = self.root / f"initial-{secrets.token_hex(4)}"
        if _rename_exchange(str(tmp_link), str(self.link)):
            os.rename(tmp_link, aside)
        else:
            os.rename(self.link, aside)
            os.replace(tmp_link, self.link)
        if not any(aside.iterdir()):
            aside.rmdir()
        else:
            log.warning("dependency_initial_tree_kept", path=str(aside))

    def mark_retired(self, path: Path) -> None:
        marker = path.with_name(path.name + ".retired")
        if not marker.exists():
            marker.write_text(f"{time.time():.3f}\n", "utf-8")

    def collect(self, *, now: float | None = None) -> list[Path]:
        """Delete trees no execution can be using any more; return what was removed."""
        now = time.time() if now is None else now
        current = self.current_dir()
        removed: list[Path] = []
        if not self.root.is_dir():
            return removed
        for entry in os.scandir(self.root):
            path = Path(entry.path)
            if entry.name.startswith("scratch-"):
                remove_tree(path)
                removed.append(path)
                continue
            if not _VERSION_DIR.match(entry.name) or path == current:
                continue
            marker = path.with_name(path.name + ".retired")
            manifest = path.with_name(path.name + ".json")
            if not manifest.exists():
                # Never live (an install interrupted before its switch): nobody binds it.
                remove_tree(path)
                removed.append(path)
                continue
            if not marker.exists():
                self.mark_retired(path)
                continue
            try:
                retired_at = float(marker.read_text("utf-8").strip() or 0)
            except (OSError, ValueError):
                retired_at = 0.0
            if now - retired_at >= self.retire_after:
                remove_tree(path)
                manifest.unlink(missing_ok=True)
                marker.unlink(missing_ok=True)
                removed.append(path)
        return removed


def _mtime_iso(path: Path) -> str:
    return datetime.fromtimestamp(path.stat().st_mtime, UTC).isoformat()


def _entry(name: str, version: str, install_time: str) -> dict[str, Any]:
    return {
        "name": name,
        "version": version,
        "install_location": SANDBOX_VENV_MOUNT,
        "install_time": install_time,
        "is_from_template": False,
    }


# ---------------------------------------------------------------------------- pip sandbox
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


@dataclass
class PipJob:
    """One pip run: what to install, where, with which index."""

    requirements: list[str]
    index_url: str
    target: Path
    scratch: Path
    cache: Path


class PipRunner:
    """Builds and runs the sandboxed ``pip install --target`` command."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._mounts: list[Mount] | None = None
        self._disable_userns = True
        self._seccomp_program: bytes | None = None
        self._pip: tuple[str | None, list[str]] | None = None
        # Where a compiled copy of pip may live (set by the manager: the store's root).
        self.runtime_root: Path | None = None
        # pip is forked by its own spawner helper, like every sandbox (see spawner.py).
        self.spawner = Spawner(settings.python_binary)

    def locate_pip(self) -> tuple[str | None, list[str]]:
        """pip's package dir to bind (a compiled copy when possible) and the fallback argv."""
        if self._pip is None:
            pip_dir, fallback = find_pip(self.settings)
            if pip_dir and self.runtime_root is not None and not self.settings.disable_bwrap:
                pip_dir = (
                    compiled_pip_copy(pip_dir, self.runtime_root, self.settings.python_binary) or pip_dir
                )
            self._pip = (pip_dir, fallback)
        return self._pip

    def prepare(self) -> None:
        if self._mounts is not None:
            return
        self._mounts = host_system_mounts()
        if not self.settings.disable_bwrap:
            self._disable_userns = installed_bwrap_supports(self.settings.bwrap_path, "--disable-userns")
            if self.settings.seccomp_enabled:
                # The executions' filter: an sdist build is untrusted code with network.
                self._seccomp_program = load_seccomp_program()

    def ids(self) -> tuple[int, int] | None:
        """The uid/gid pip runs as: the sandbox user when the daemon is root."""
        return self.settings.sandbox_ids() if self.settings.runs_as_root else None

    def environment(self, home: str, tmpdir: str) -> list[tuple[str, str]]:
        """pip's whole environment: nothing of the daemon's."""
        env = [
            ("PATH", "/usr/local/bin:/usr/bin:/bin"),
            ("HOME", home),
            ("TMPDIR", tmpdir),
            ("LANG", "C.UTF-8"),
            ("PYTHONDONTWRITEBYTECODE", "1"),
        ]
        if os.path.isfile(CA_BUNDLE):
            env += [("SSL_CERT_FILE", CA_BUNDLE), ("PIP_CERT", CA_BUNDLE), ("REQUESTS_CA_BUNDLE", CA_BUNDLE)]
        return env

    def pip_arguments(self, job: PipJob, target: str, cache: str) -> list[str]:
        """pip's own arguments (after the interpreter / pip location)."""
        args = [
            "--isolated",  # no pip.conf, no PIP_* variables: only what is listed here
            "install",
            "--target",
            target,
            "--cache-dir",
            cache,
            "--index-url",
            job.index_url,
            "--no-input",
            "--disable-pip-version-check",
            "--no-warn-script-location",
            "--progress-bar",
            "off",
            "--root-user-action",
            "ignore",
        ]
        if os.path.isfile(CA_BUNDLE):
            args += ["--cert", CA_BUNDLE]
        # Validated PEP 508 strings; "--" ends option parsing for good measure.
        return [*args, "--", *job.requirements]

    def command(self, job: PipJob) -> tuple[list[str], list[int], dict[str, str], str | None]:
        """(argv, descriptors to pass (the caller closes them), Popen environment, cwd)."""
        pip_dir, fallback = self.locate_pip()
        if self.settings.disable_bwrap:
            tmpdir = str(job.scratch / "tmp")
            head = [self.settings.python_binary, "-I", pip_dir] if pip_dir else fallback
            argv = [*head, *self.pip_arguments(job, str(job.target), str(job.cache))]
            return argv, [], dict(self.environment(str(job.scratch), tmpdir)), str(job.scratch)
        self.prepare()
        assert self._mounts is not None
        inner_pip = f"{PIP_RUNTIME_MOUNT}/pip"
        head = [self.settings.python_binary, "-I", inner_pip] if pip_dir else fallback
        argv = [*head, *self.pip_arguments(job, SANDBOX_VENV_MOUNT, PIP_CACHE_MOUNT)]
        extra = [
            Mount("bind", str(job.target), SANDBOX_VENV_MOUNT),
            Mount("bind", str(job.cache), PIP_CACHE_MOUNT),
            Mount("ro-bind-try", "/etc/resolv.conf", "/etc/resolv.conf"),
            Mount("ro-bind-try", "/etc/hosts", "/etc/hosts"),
        ]
        if pip_dir:
            extra.insert(0, Mount("ro-bind", pip_dir, inner_pip))
        uid, gid = self.settings.sandbox_ids()
        files = {
            "/etc/passwd": f"root:x:0:0:root:/root:/usr/sbin/nologin\n"
            f"sandbox:x:{uid}:{gid}:sandbox:/workspace:/bin/bash\n",
            "/etc/group": f"root:x:0:\nsandbox:x:{gid}:\n",
            "/etc/nsswitch.conf": "passwd: files\ngroup: files\nhosts: files dns\n",
        }
        data_files = [(memfd_with(path, text.encode()), path) for path, text in files.items()]
        prog = self._seccomp_program
        seccomp_fd = memfd_with("seccomp", prog) if prog else None
        spec = SandboxSpec(
            command=argv,
            workspace=str(job.scratch),
            bwrap_path=self.settings.bwrap_path,
            system_mounts=self._mounts,
            extra_mounts=extra,
            env=self.environment("/workspace", "/workspace/tmp"),
            tmpfs_size_bytes=self.settings.tmpfs_size_mb * MIB,
            network=True,
            disable_userns=self._disable_userns,
            hostname="pip",
            data_files=data_files,
            seccomp_fd=seccomp_fd,
        )
        return build_bwrap_argv(spec), spec.inherited_fds(), {}, None

    async def run(self, job: PipJob, stop: asyncio.Event | None = None) -> PipOutcome:
        """Run pip for ``job`` to completion, timeout or ``stop``; never raises for pip's failures."""
        started = time.monotonic()
        timeout = float(self.settings.dependency_install_timeout_seconds)
        # Both block (bwrap --help, libseccomp, compiling pip once): off the event loop.
        await asyncio.to_thread(self.locate_pip)
        if not self.settings.disable_bwrap:
            await asyncio.to_thread(self.prepare)
        argv, fds, env, cwd = self.command(job)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        try:
            child = await self.spawner.spawn(
                argv,
                fds={0: devnull, 1: out_w, 2: out_w, **{fd: fd for fd in fds}},
                env=env,
                cwd=cwd,
                uid_gid=self.ids(),
                rlimits=_pip_rlimits(self.settings),
                umask=0o022,
            )
        except OSError as exc:
            os.close(out_r)
            raise ApiError(
                500,
                "Executor.InternalError",
                "The dependency installer could not start.",
                str(exc),
            ) from exc
        finally:
            for fd in (*fds, out_w, devnull):
                os.close(fd)
        tail = bytearray()
        timed_out = False
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(out_r, "rb", buffering=0)
        )

        async def pump() -> None:
            while chunk := await reader.read(65536):
                tail.extend(chunk)
                if len(tail) > OUTPUT_TAIL_BYTES:
                    del tail[: len(tail) - OUTPUT_TAIL_BYTES]
            # Shielded: cancelling the pump must not cancel the spawner's future.
            await asyncio.shield(child.exited)

        pumping = asyncio.ensure_future(pump())
        waiters: set[asyncio.Future[Any]] = {pumping}
        if stop is not None:
            waiters.add(asyncio.ensure_future(stop.wait()))
        stopped = False
        try:
            done, _ = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if pumping in done:
                pumping.result()  # the reader's own failure, if any
            else:
                stopped = bool(done)
                timed_out = not stopped
                # bwrap's --die-with-parent takes the whole PID namespace down with it.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.pid, signal.SIGKILL)
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
            returncode, _usage = await child.exited
            transport.close()
        return PipOutcome(
            returncode=returncode,
            output_tail=tail.decode("utf-8", "replace"),
            timed_out=timed_out,
            duration=time.monotonic() - started,
            stopped=stopped,
        )


def _pip_rlimits(settings: Settings) -> list[tuple[int, int, int]]:
    """Limits for bwrap, pip and any build it runs (set between fork and exec)."""
    memory = max(settings.memory_limit_mb, 2048) * MIB
    pids = max(settings.pids_limit, 256)
    fsize = settings.max_file_size_mb * MIB
    nofile = max(settings.max_open_files, 1024)
    cpu = settings.dependency_install_timeout_seconds + 30
    return [
        (resource.RLIMIT_DATA, memory, memory),
        (resource.RLIMIT_NPROC, pids, pids),
        (resource.RLIMIT_FSIZE, fsize, fsize),
        (resource.RLIMIT_NOFILE, nofile, nofile),
        (resource.RLIMIT_CPU, cpu, cpu + 5),
        (resource.RLIMIT_CORE, 0, 0),
    ]


# ---------------------------------------------------------------------------- the manager
class DependencyManager:
    """Serves POST /internal/session-config/sync: one sync at a time, atomic switches."""

    def __init__(
        self,
        settings: Settings,
        on_change: Callable[[], Awaitable[None]] | None = None,
        *,
        lock_wait_seconds: float = LOCK_WAIT_SECONDS,
    ) -> None:
        self.settings = settings
        self.on_change = on_change
        self.lock_wait_seconds = lock_wait_seconds
        self.store = VenvStore(settings)
        self.pip = PipRunner(settings)
        self.pip.runtime_root = self.store.root
        self._lock = asyncio.Lock()
        self._current: Manifest | None = None
        self._loaded = False
        self.last_pip_duration: float | None = None
        # Shutdown: no new sync once closing; stop ends the running pip; idle = none runs.
        self._closing = False
        self._stop = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    def _load(self) -> None:
        if not self._loaded:
            self._current = self.store.load_current()
            self._loaded = True

    async def aclose(self) -> None:
        """Stop pip's spawner helper."""
        await self.pip.spawner.aclose()

    async def shutdown(self, grace: float) -> None:
        """Refuse new syncs; give the running one ``grace`` seconds to finish, then kill its
        pip: its tree is discarded, the previous set stays live and the request answers
        503 ``Executor.ShuttingDown``. Returns once no sync runs (or ``STOP_WAIT_SECONDS``
        after the kill)."""
        self._closing = True
        if self._idle.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), max(0.0, grace))
            return
        self._stop.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), STOP_WAIT_SECONDS)

    def installed(self) -> list[dict[str, Any]]:
        """The currently installed distributions (for logs and /health)."""
        self._load()
        return [dict(item) for item in self._current.installed] if self._current else []

    async def sync(self, request: SyncRequest) -> dict[str, Any]:
        """Validate, install if the set changed, switch; answer the contract's 200 body.

        Raises :class:`ApiError`: 400 for invalid input (before anything runs), 422 when pip
        fails or times out (previous set kept, pip's output tail in ``error_detail``), 503
        ``Executor.Busy`` when another sync holds the lock longer than ``lock_wait_seconds``.
        """
        started_at = now_iso()
        began = time.monotonic()
        validate_runtime(request.language_runtime)
        index_url = validate_index_url(request.python_package_index_url)
        requested = normalize_requirements(request.dependencies, self.settings.dependency_max_entries)
        if self._closing:
            raise ShuttingDown("The executor is shutting down.")
        try:
            await asyncio.wait_for(self._lock.acquire(), self.lock_wait_seconds)
        except TimeoutError:
            raise Busy(
                "Another dependency sync is in progress.",
                solution=f"Retry in {RETRY_AFTER_SECONDS} seconds.",
                retry_after=RETRY_AFTER_SECONDS,
            ) from None
        self._idle.clear()
        try:
            if self._closing:  # began while this request waited for the lock
                raise ShuttingDown("The executor is shutting down.")
            installed = await self._sync_locked(request, requested, index_url)
        except _Stopped:
            log.warning(
                "dependency_sync_interrupted",
                reason="shutdown",
                session_id=request.session_id,
                mode=request.sync_mode,
                after_seconds=round(time.monotonic() - began, 3),
                detail="pip killed and its tree discarded; the previous set stays installed",
            )
            raise ShuttingDown(
                "The executor is shutting down: the dependency sync was interrupted.",
                solution="The previous set stays installed; sync again on the next executor.",
            ) from None
        finally:
            self._lock.release()
            self._idle.set()
        return {
            "status": "completed",
            "installed_dependencies": installed,
            # A string, never null: null fails the control plane's response model (CONTRACT.md section 1).
            "error": "",
            "started_at": started_at,
            "completed_at": now_iso(),
        }

    async def _sync_locked(
        self, request: SyncRequest, requested: dict[str, str], index_url: str
    ) -> list[dict[str, Any]]:
        self._load()
        current = self._current
        wanted = dict(requested)
        if request.sync_mode == "merge" and current is not None:
            wanted = {**current.requirements, **requested}
        logger = log.bind(
            session_id=request.session_id,
            mode=request.sync_mode,
            index_url=redact_url(index_url),
            requirements=sorted(wanted.values()),
        )
        if (
            current is not None
            and current.version != "external"
            and current.requirements == wanted
            and (current.index_url == index_url or not wanted)
            and self.store.current_dir() is not None
        ):
            logger.info("dependency_sync_unchanged")
            return [dict(item) for item in current.installed]
        try:
            await asyncio.to_thread(self._prepare_dirs)
            new = await asyncio.to_thread(self.store.new_version)
        except OSError as exc:
            raise _store_error(self.store, exc) from exc
        try:
            manifest = await self._install(new, wanted, index_url, logger)
            await asyncio.to_thread(self.store.write_manifest, new, manifest)
            await asyncio.to_thread(self.store.switch, new)
        except BaseException as exc:
            await asyncio.to_thread(remove_tree, new)
            new.with_name(new.name + ".json").unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise _store_error(self.store, exc) from exc
            raise
        self._current = manifest
        logger.info("dependency_sync_switched", version=new.name, installed=len(manifest.installed))
        if self.on_change is not None:
            try:
                await self.on_change()
            except Exception:
                logger.exception("dependency_on_change_failed")
        await asyncio.to_thread(self.store.collect)
        return [dict(item) for item in manifest.installed]

    def _prepare_dirs(self) -> None:
        self.store.ensure_root()
        self.store.collect()
        ids = self.pip.ids()
        cache = self.store.cache
        if not cache.exists():
            cache.mkdir(parents=True, mode=0o700)
        if ids is not None and os.stat(cache).st_uid != ids[0]:
            _chown_tree(cache, ids)

    async def _install(self, new: Path, wanted: dict[str, str], index_url: str, logger: Any) -> Manifest:
        if wanted:
            if self._stop.is_set():
                raise _Stopped
            scratch = self.store.root / f"scratch-{new.name}"
            await asyncio.to_thread(self._make_scratch, scratch, new)
            try:
                job = PipJob(list(wanted.values()), index_url, new, scratch, self.store.cache)
                outcome = await self.pip.run(job, self._stop)
            finally:
                await asyncio.to_thread(remove_tree, scratch)
            if outcome.stopped:
                raise _Stopped
            self.last_pip_duration = outcome.duration
            if outcome.timed_out or outcome.returncode != 0:
                logger.warning(
                    "dependency_install_failed",
                    returncode=outcome.returncode,
                    timed_out=outcome.timed_out,
                    duration=round(outcome.duration, 3),
                )
                raise _install_failed(outcome, self.settings.dependency_install_timeout_seconds)
            logger.info("dependency_install_done", duration=round(outcome.duration, 3))
        owner = (os.geteuid(), os.getegid()) if self.settings.runs_as_root else None
        await asyncio.to_thread(seal_tree, new, owner)
        install_time = now_iso()
        dists = await asyncio.to_thread(read_installed, new)
        installed = [_entry(name, version, install_time) for name, version in dists]
        return Manifest(new.name, wanted, index_url, installed)

    def _make_scratch(self, scratch: Path, target: Path) -> None:
        remove_tree(scratch)
        scratch.mkdir(mode=0o700)
        (scratch / "tmp").mkdir(mode=0o700)
        ids = self.pip.ids()
        if ids is not None:
            for path in (scratch, scratch / "tmp", target):
                os.chown(path, *ids)


class _Stopped(Exception):
    """pip was killed because the executor is shutting down."""


def _store_error(store: VenvStore, exc: OSError) -> ApiError:
    log.error("dependency_store_error", path=str(store.root), error=str(exc))
    return ApiError(
        500,
        "Executor.InternalError",
        "The dependency directory cannot be written.",
        f"{type(exc).__name__}: {exc.strerror or exc}",
        f"Make the parent of SANDBOX_VENV_PATH ({store.link.parent}) writable by the daemon.",
    )


def _install_failed(outcome: PipOutcome, timeout: int) -> ApiError:
    tail = outcome.output_tail[-ERROR_TAIL_CHARS:]
    if outcome.timed_out:
        description = f"Dependency installation timed out after {timeout} seconds."
        tail = f"{tail}\n[timed out after {timeout} s]".lstrip()
    else:
        description = f"pip failed to install the dependencies (exit code {outcome.returncode})."
    return ApiError(
        422,
        "Executor.DependencyInstallFailed",
        description,
        tail,
        "Check the package names, versions and the index URL; the previous set stays installed.",
    )
