"""pip in its own sandbox: ``pip install --target`` a new tree, reaching only the package index.

At the daemon's isolation level. At the bwrap levels the sandbox is the executions'
(``HostProfile.spec``: system mounts, synthetic /etc, seccomp, uid, rlimits) with a network
namespace of its own: a private loopback and no route anywhere; its one way out is the
egress proxy the daemon runs for the install (``egress/``), reached through the relay. At
the landlock level pip is confined by the spawner's child like the executions
(``confined.py``), plus its own policy: TCP connect to the proxy's loopback port only
(Landlock) and the TCP-client seccomp rules (``egress/tcp_rules.py``). Write access only to
the new tree, the pip cache and a scratch directory; a timeout and an output cap. With
``DEPENDENCY_ALLOW_SDIST=false`` pip installs wheels only, so no package code runs at all.
docs/DEPENDENCIES.md says what that protects and what not.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import structlog

from ..bwrap import Mount, build_bwrap_argv
from ..config import Settings
from ..confined import bare_launch, confined_launch
from ..errors import InternalError, SandboxStartError
from ..host import HostProfile, memfd_with
from ..process import Launch, SandboxProcess
from ..runtimes import SANDBOX_VENV_MOUNT
from ..spawner import Spawner
from .egress.policy import policy_for
from .egress.proxy import EgressProxy
from .egress.route import RELAY_PATH, Route, loopback_route, relay_command, relay_program, socket_route
from .egress.tcp_rules import pip_landlock_program
from .pip_options import MissingWheel, find_missing_wheel, pip_extra_args, read_log_tail
from .pip_runtime import compiled_pip_copy, find_pip

log = structlog.get_logger(__name__)

# Kept of pip's combined output (an error answer carries its end).
OUTPUT_TAIL_BYTES = 64 * 1024
# Paths inside the pip sandbox.
PIP_RUNTIME_MOUNT = "/opt/pip-runtime"
PIP_CACHE_MOUNT = "/var/cache/pip"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
# pip's debug log, in the scratch directory: it tells "no wheel" from "no such project".
PIP_LOG = "pip-debug.log"
# Read by pip at the landlock level besides the executions' /etc files: its user agent
# (pip._vendor.distro; a file Landlock refuses answers EACCES, which distro does not
# expect). Nothing is resolved in pip's sandbox: the proxy resolves.
PIP_ETC_FILES = ("/etc/os-release", "/etc/debian_version", "/etc/lsb-release")

# A refused connection: (host, port, reason); host and port are None for an unparsable request.
Denial = tuple[str | None, int | None, str]


@dataclass(frozen=True)
class PipOutcome:
    """How one pip run ended."""

    returncode: int | None
    output_tail: str
    timed_out: bool
    duration: float
    stopped: bool = False  # killed on request (shutdown), not for its own sake
    # Wheels only: the requirement that failed for want of a wheel, when that was why.
    missing_wheel: MissingWheel | None = None
    # What the egress proxy refused during the run (the last 100).
    denied: tuple[Denial, ...] = ()


@dataclass
class PipJob:
    """One pip run: what to install, where, with which index. The proxy's socket goes in
    ``egress/`` beside the scratch directory (the store's root)."""

    requirements: list[str]
    index_url: str
    target: Path
    scratch: Path
    cache: Path


class PipRunner:
    """Builds and runs the sandboxed ``pip install --target`` command behind its proxy.

    The sandbox is the executions' (``HostProfile.spec``) with no network of its own, and
    it runs through the same spawn/capture/kill path (``process.py``).
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
        self._relay: bytes | None = None
        self._landlock_program: bytes | None = None
        # Where a compiled copy of pip may live (the store's root); None: bind pip as it is.
        self.runtime_root = runtime_root
        self.spawner = spawner or Spawner(settings.python_binary)

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

    @property
    def namespaced(self) -> bool:
        """pip gets a network namespace of its own (the bwrap levels; else it shares the
        host's and is held to the proxy's port by Landlock, or by nothing at level none)."""
        return self.host.uses_bwrap

    @property
    def tcp_confined(self) -> bool:
        """Code in pip's sandbox can reach nothing but the proxy: a network namespace, or
        Landlock's TCP rules (ABI >= 4) at the landlock level."""
        host = self.host
        return self.namespaced or (host.level == "landlock" and host.facts.landlock_abi >= 4)

    def environment(self, home: str, tmpdir: str, route: Route) -> list[tuple[str, str]]:
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
        return env + route.environment()

    def pip_arguments(self, job: PipJob, target: str, cache: str, extra: list[str]) -> list[str]:
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
        return [*args, *extra, "--", *job.requirements]

    def command(self, job: PipJob, route: Route) -> tuple[list[str], list[int], dict[str, str], str | None]:
        """(argv, descriptors to pass (the caller closes them), environment, cwd); without
        bwrap the real paths (:meth:`launch` confines them)."""
        pip_dir, fallback = self.locate_pip()
        python = self.settings.python_binary
        allow_sdist = self.settings.dependency_allow_sdist
        if not self.namespaced:
            log_path = str(job.scratch / PIP_LOG)
            extra = pip_extra_args(allow_sdist=allow_sdist, proxy_url=route.proxy_url, log_path=log_path)
            head = [python, "-I", pip_dir] if pip_dir else fallback
            argv = [*head, *self.pip_arguments(job, str(job.target), str(job.cache), extra)]
            env = self.environment(str(job.scratch), str(job.scratch / "tmp"), route)
            return argv, [], dict(env), str(job.scratch)
        log_path = f"/workspace/{PIP_LOG}"
        extra = pip_extra_args(allow_sdist=allow_sdist, proxy_url=route.proxy_url, log_path=log_path)
        inner_pip = f"{PIP_RUNTIME_MOUNT}/pip"
        head = [python, "-I", inner_pip] if pip_dir else fallback
        argv = [*head, *self.pip_arguments(job, SANDBOX_VENV_MOUNT, PIP_CACHE_MOUNT, extra)]
        mounts = [
            Mount("bind", str(job.target), SANDBOX_VENV_MOUNT),
            Mount("bind", str(job.cache), PIP_CACHE_MOUNT),
            *route.mounts,
        ]
        if pip_dir:
            mounts.insert(0, Mount("ro-bind", pip_dir, inner_pip))
        # The executions' seccomp filter too: an sdist build is untrusted code.
        spec = self.host.spec(
            command=relay_command(python, argv) if route.relay else argv,
            workspace=str(job.scratch),
            env=self.environment("/workspace", "/workspace/tmp", route),
            extra_mounts=mounts,
            hostname="pip",
        )
        if route.relay:
            if self._relay is None:
                self._relay = relay_program(python)
            relay = (memfd_with("egress-relay", self._relay), RELAY_PATH)
            spec = replace(spec, data_files=(*spec.data_files, relay))
        return build_bwrap_argv(spec), spec.inherited_fds(), {}, None

    def launch(
        self,
        job: PipJob,
        route: Route,
        argv: list[str],
        fds: dict[int, int],
        env: dict[str, str],
        cwd: str | None,
    ) -> Launch:
        """The launch of :meth:`command` at the host's level (``fds``: child -> ours)."""
        host = self.host
        rlimits = host.pip_rlimits
        if host.uses_bwrap:
            return Launch(argv, fds, env=env, cwd=cwd, run_as=host.run_as, rlimits=rlimits, umask=0o022)
        if host.level == "none":
            return bare_launch(
                host, argv, fds, cwd=cwd or str(job.scratch), env=env, rlimits=rlimits, umask=0o022
            )
        pip_dir, _ = self.locate_pip()
        # `python -I <pip dir>` puts the directory's parent on sys.path.
        read_only = [*PIP_ETC_FILES, *([os.path.dirname(pip_dir)] if pip_dir else [])]
        return confined_launch(
            host,
            argv,
            fds,
            workspace=str(job.scratch),
            private_tmp=str(job.scratch / "tmp"),
            env=env,
            rlimits=rlimits,
            read_only=read_only,
            read_write=[str(job.target), str(job.cache)],
            # The proxy's port, nothing else (Landlock's rules are per port, not address).
            connect_tcp=[route.tcp_port] if route.tcp_port is not None else [],
            seccomp_program=self.landlock_program(),
            umask=0o022,
        )

    def landlock_program(self) -> bytes:
        """The landlock level's seccomp filter with TCP client sockets allowed and nothing
        else of IPv4/IPv6 (no UDP, raw, Fast Open or listen); built once."""
        if self._landlock_program is None:
            self._landlock_program = pip_landlock_program()
        return self._landlock_program

    @contextlib.asynccontextmanager
    async def egress(self, job: PipJob) -> AsyncIterator[tuple[EgressProxy, Route]]:
        """The install's proxy, listening for pip until the block ends."""
        policy = policy_for(
            job.index_url,
            self.settings.dependency_allowed_hosts,
            forbidden_internal_ports=[self.settings.executor_port],
        )
        token = None if self.namespaced else secrets.token_hex(16)
        async with EgressProxy(policy, token=token) as proxy:
            try:
                await proxy.pin_index()
                if token is None:
                    # pip's uid may traverse the directory, not list it; the socket is 0600, pip's.
                    sockets = job.scratch.parent / "egress"
                    sockets.mkdir(mode=0o711, exist_ok=True)
                    os.chmod(sockets, 0o711)  # noqa: S103 - traverse only, no listing
                    path = sockets / f"{job.target.name}.sock"
                    await proxy.start_unix(str(path), owner=self.ids())
                    route = socket_route(str(path))
                else:
                    route = loopback_route(await proxy.start_tcp(), token)
            except OSError as exc:
                message = "The dependency installer's egress proxy could not start."
                raise InternalError(message, str(exc)) from exc
            yield proxy, route

    async def run(self, job: PipJob, stop: asyncio.Event | None = None) -> PipOutcome:
        """Run pip for ``job`` to completion, timeout or ``stop``; never raises for pip's failures."""
        started = time.monotonic()
        # Both block (the host probe, libseccomp, compiling pip once): off the event loop.
        await asyncio.to_thread(lambda: self.host)
        await asyncio.to_thread(self.locate_pip)
        if not self.namespaced and self.host.level != "none":
            await asyncio.to_thread(self.landlock_program)
        if self.settings.dependency_allow_sdist and not self.tcp_confined:
            log.warning(
                "dependency_builds_unconfined",
                level=self.host.level,
                detail="source builds share the host's network here: only what follows the "
                "proxy settings is held to the index (DEPENDENCY_ALLOW_SDIST=false closes it)",
            )
        async with self.egress(job) as (proxy, route):
            outcome = await self._run_pip(job, route, stop)
            denied = tuple(proxy.denied)
        missing = None
        failed = outcome.returncode != 0 and not (outcome.timed_out or outcome.stopped)
        if failed and not self.settings.dependency_allow_sdist:
            log_text = await asyncio.to_thread(read_log_tail, str(job.scratch / PIP_LOG))
            missing = find_missing_wheel(outcome.output_tail, log_text)
        return replace(outcome, duration=time.monotonic() - started, missing_wheel=missing, denied=denied)

    async def _run_pip(self, job: PipJob, route: Route, stop: asyncio.Event | None) -> PipOutcome:
        timeout = float(self.settings.dependency_install_timeout_seconds)
        argv, fds, env, cwd = self.command(job, route)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        stdio = {0: devnull, 1: out_w, 2: out_w, **{fd: fd for fd in fds}}
        launch = self.launch(job, route, argv, stdio, env, cwd)
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
            duration=0.0,
            stopped=stopped,
        )
