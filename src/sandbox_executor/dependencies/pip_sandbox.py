"""pip in its own bwrap sandbox: ``pip install --target`` a new tree, nothing else.

Network shared (it must reach the index), an environment of its own, the system read-only,
write access only to the new tree, the pip cache and a scratch directory; rlimits, a
timeout and an output cap. docs/DEPENDENCIES.md says what that protects and what not.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.metadata
import importlib.util
import os
import resource
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from ..config import MIB, Settings
from ..errors import InternalError
from ..runtimes import SANDBOX_VENV_MOUNT
from ..sandbox import (
    Mount,
    SandboxSpec,
    build_bwrap_argv,
    host_system_mounts,
    installed_bwrap_supports,
    load_seccomp_program,
    memfd_with,
)
from ..spawner import Spawner
from .fs import remove_tree, seal_tree

log = structlog.get_logger(__name__)

# Kept of pip's combined output (an error answer carries its end).
OUTPUT_TAIL_BYTES = 64 * 1024
# Paths inside the pip sandbox.
PIP_RUNTIME_MOUNT = "/opt/pip-runtime"
PIP_CACHE_MOUNT = "/var/cache/pip"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


@dataclass(frozen=True)
class PipOutcome:
    """How one pip run ended."""

    returncode: int | None
    output_tail: str
    timed_out: bool
    duration: float
    stopped: bool = False  # killed on request (shutdown), not for its own sake


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

    def __init__(self, settings: Settings, runtime_root: Path | None = None) -> None:
        self.settings = settings
        self._mounts: list[Mount] | None = None
        self._disable_userns = True
        self._seccomp_program: bytes | None = None
        self._pip: tuple[str | None, list[str]] | None = None
        # Where a compiled copy of pip may live (the store's root); None: bind pip as it is.
        self.runtime_root = runtime_root
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
                rlimits=pip_rlimits(self.settings),
                umask=0o022,
            )
        except OSError as exc:
            os.close(out_r)
            raise InternalError("The dependency installer could not start.", str(exc)) from exc
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


def pip_rlimits(settings: Settings) -> list[tuple[int, int, int]]:
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
