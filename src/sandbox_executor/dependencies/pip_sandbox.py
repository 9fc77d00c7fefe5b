"""pip in its own sandbox: ``pip install --target`` a new tree, nothing else.

At the daemon's isolation level: bwrap (bwrap-compat's options where that is the level),
or at the landlock level confined by the spawner's child like the executions
(``confined.py``), TCP connect limited to the index's ports. Network shared (it must
reach the index), an environment of its own, the system read-only, write access only to
the new tree, the pip cache and a scratch directory; rlimits, a timeout and an output cap.
docs/DEPENDENCIES.md says what that protects and what not.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.metadata
import importlib.util
import os
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from .. import seccomp
from ..bwrap import Mount, build_bwrap_argv
from ..config import Settings
from ..confined import bare_launch, confined_launch
from ..egress_policy import index_target, parse_allowed_hosts
from ..errors import InternalError, SandboxStartError
from ..host import HostProfile
from ..process import Launch, SandboxProcess
from ..runtimes import SANDBOX_VENV_MOUNT
from ..spawner import Spawner
from .fs import remove_tree, seal_tree

log = structlog.get_logger(__name__)

# Kept of pip's combined output (an error answer carries its end).
OUTPUT_TAIL_BYTES = 64 * 1024
# Paths inside the pip sandbox.
PIP_RUNTIME_MOUNT = "/opt/pip-runtime"
PIP_CACHE_MOUNT = "/var/cache/pip"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
# Read by pip at the landlock level besides the executions' /etc files: its user agent
# (pip._vendor.distro; a file Landlock refuses answers EACCES, which distro does not
# expect) and the resolver's configuration.
PIP_ETC_FILES = ("/etc/os-release", "/etc/debian_version", "/etc/lsb-release", "/etc/resolv.conf")


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
    """Builds and runs the sandboxed ``pip install --target`` command.

    The sandbox is the executions' (``HostProfile.spec``: system mounts, synthetic /etc,
    seccomp, uid, rlimits) with the network shared, and it runs through the same
    spawn/capture/kill path (``process.py``).
    """

    def __init__(
        self,
        settings: Settings,
        runtime_root: Path | None = None,
        *,
        host: HostProfile | None = None,
        spawner: Spawner | None = None,
    ) -> None:
        """``host`` is the daemon's profile (probed here on first use when not given);
        ``spawner`` the helper that forks pip (one of its own by default)."""
        self.settings = settings
        self._host = host
        self._pip: tuple[str | None, list[str]] | None = None
        # Where a compiled copy of pip may live (the store's root); None: bind pip as it is.
        self.runtime_root = runtime_root
        self.spawner = spawner or Spawner(settings.python_binary)
        self._landlock_program: bytes | None = None

    @property
    def host(self) -> HostProfile:
        if self._host is None:
            self._host = HostProfile.probe(self.settings)
        return self._host

    def locate_pip(self) -> tuple[str | None, list[str]]:
        """pip's package dir to bind (a compiled copy when possible) and the fallback argv."""
        if self._pip is None:
            pip_dir, fallback = find_pip(self.settings)
            if pip_dir and self.runtime_root is not None and self.host.isolated:
                pip_dir = (
                    compiled_pip_copy(pip_dir, self.runtime_root, self.settings.python_binary) or pip_dir
                )
            self._pip = (pip_dir, fallback)
        return self._pip

    def ids(self) -> tuple[int, int] | None:
        """The uid/gid pip runs as: the sandbox user when the daemon is root."""
        return self.host.run_as

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
        """(argv, descriptors to pass (the caller closes them), environment, cwd)."""
        pip_dir, fallback = self.locate_pip()
        host = self.host
        if not host.uses_bwrap:  # landlock or none: the real paths (run() adds the rest)
            tmpdir = str(job.scratch / "tmp")
            head = [self.settings.python_binary, "-I", pip_dir] if pip_dir else fallback
            argv = [*head, *self.pip_arguments(job, str(job.target), str(job.cache))]
            return argv, [], dict(self.environment(str(job.scratch), tmpdir)), str(job.scratch)
        inner_pip = f"{PIP_RUNTIME_MOUNT}/pip"
        head = [self.settings.python_binary, "-I", inner_pip] if pip_dir else fallback
        argv = [*head, *self.pip_arguments(job, SANDBOX_VENV_MOUNT, PIP_CACHE_MOUNT)]
        extra = [
            Mount("bind", str(job.target), SANDBOX_VENV_MOUNT),
            Mount("bind", str(job.cache), PIP_CACHE_MOUNT),
        ]
        if pip_dir:
            extra.insert(0, Mount("ro-bind", pip_dir, inner_pip))
        # The executions' seccomp filter too: an sdist build is untrusted code with network.
        spec = host.spec(
            command=argv,
            workspace=str(job.scratch),
            env=self.environment("/workspace", "/workspace/tmp"),
            extra_mounts=extra,
            network=True,
            hostname="pip",
        )
        return build_bwrap_argv(spec), spec.inherited_fds(), {}, None

    def launch(
        self, job: PipJob, argv: list[str], fds: dict[int, int], env: dict[str, str], cwd: str | None
    ) -> Launch:
        """The launch of ``command(job)`` at the host's level (``fds``: child -> ours)."""
        host = self.host
        rlimits = host.pip_rlimits
        if host.uses_bwrap:
            return Launch(argv, fds, env=env, cwd=cwd, run_as=host.run_as, rlimits=rlimits, umask=0o022)
        if host.level == "none":
            return bare_launch(
                host, argv, fds, cwd=cwd or str(job.scratch), env=env, rlimits=rlimits, umask=0o022
            )
        return self.confined(job, argv, fds, env)

    def confined(self, job: PipJob, argv: list[str], fds: dict[int, int], env: dict[str, str]) -> Launch:
        """pip at the landlock level: its directories, the system, TCP connect to
        :meth:`connect_ports` only, :meth:`landlock_program`'s seccomp filter.

        Hooks for a policy on top (an egress proxy): override ``connect_ports`` and
        ``landlock_program``.
        """
        pip_dir, _ = self.locate_pip()
        # `python -I <pip dir>` puts the directory's parent on sys.path.
        read_only = [*PIP_ETC_FILES, *([os.path.dirname(pip_dir)] if pip_dir else [])]
        return confined_launch(
            self.host,
            argv,
            fds,
            workspace=str(job.scratch),
            private_tmp=str(job.scratch / "tmp"),
            env=env,
            rlimits=self.host.pip_rlimits,
            read_only=read_only,
            read_write=[str(job.target), str(job.cache)],
            connect_tcp=self.connect_ports(job),
            seccomp_program=self.landlock_program(),
            umask=0o022,
        )

    def connect_ports(self, job: PipJob) -> list[int]:
        """The TCP ports pip may connect to at the landlock level: the index's and those of
        DEPENDENCY_ALLOWED_HOSTS (Landlock rules are per port, not per address)."""
        targets = {index_target(job.index_url), *parse_allowed_hosts(self.settings.dependency_allowed_hosts)}
        ports = {target.port for target in targets}
        if index_target(job.index_url).scheme == "https":
            ports.add(443)  # PyPI's files live on another host (files.pythonhosted.org)
        return sorted(ports)

    def landlock_program(self) -> bytes:
        """The landlock level's seccomp filter with IPv4/IPv6 sockets allowed (pip must
        resolve and reach the index); built once."""
        if self._landlock_program is None:
            self._landlock_program = seccomp.build_landlock_program(allow_inet=True)
        return self._landlock_program

    async def run(self, job: PipJob, stop: asyncio.Event | None = None) -> PipOutcome:
        """Run pip for ``job`` to completion, timeout or ``stop``; never raises for pip's failures."""
        started = time.monotonic()
        timeout = float(self.settings.dependency_install_timeout_seconds)
        # Both block (the host probe, libseccomp, compiling pip once): off the event loop.
        await asyncio.to_thread(lambda: self.host)
        await asyncio.to_thread(self.locate_pip)
        argv, fds, env, cwd = self.command(job)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        stdio = {0: devnull, 1: out_w, 2: out_w, **{fd: fd for fd in fds}}
        launch = self.launch(job, argv, stdio, env, cwd)
        try:
            process = await SandboxProcess.spawn(self.spawner, launch, ours=[out_r])
        except SandboxStartError as exc:
            raise InternalError("The dependency installer could not start.", str(exc)) from exc
        output = await process.capture(out_r, OUTPUT_TAIL_BYTES, tail=True)
        waiters: set[asyncio.Future[Any]] = {asyncio.ensure_future(asyncio.shield(process.exited))}
        if stop is not None:
            waiters.add(asyncio.ensure_future(stop.wait()))
        try:
            done, _ = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            ended = process.exited.done()
            stopped = not ended and bool(done)
            timed_out = not ended and not stopped
        finally:
            for waiter in waiters:
                waiter.cancel()
            # Also on cancellation: pip's whole sandbox goes, never outlives the sync.
            await process.kill()
            await process.drain([output])
        returncode, _usage = process.exited.result()
        return PipOutcome(
            returncode=returncode,
            output_tail=output.data().decode("utf-8", "replace"),
            timed_out=timed_out,
            duration=time.monotonic() - started,
            stopped=stopped,
        )
