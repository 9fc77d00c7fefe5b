"""The execution engine: one request in, one truthful :class:`ExecutionResult` out."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

import structlog

from .config import Settings
from .models import ExecuteRequest, ExecutionResult, Language, TerminationReason
from .runner import Limits, Sandbox, SandboxStartError, crashed_result, job_from_request
from .runtimes import SANDBOX_VENV_MOUNT, base_environment
from .sandbox import (
    Mount,
    SandboxSpec,
    host_system_mounts,
    installed_bwrap_supports,
    load_seccomp_program,
    memfd_with,
)
from .spawner import Spawner

log = structlog.get_logger(__name__)


class Engine:
    """Starts sandboxes and runs executions in them."""

    def __init__(self, settings: Settings, seccomp_program: bytes | None = None) -> None:
        self.settings = settings
        self.limits = Limits.from_settings(settings)
        self._seccomp_program = seccomp_program
        self._mounts: list[Mount] | None = None
        self._disable_userns = True
        self._etc_files: dict[str, bytes] = {}
        self.warm_sandbox_source: Callable[[Language], Sandbox | None] | None = None
        # The last sandbox start failure, cleared by the next successful run (for /health).
        self.last_start_error: str | None = None
        self.spawner = Spawner(settings.python_binary)

    def prepare(self) -> None:
        """Inspect the host once: system mounts, bwrap features, synthetic /etc files."""
        if self._mounts is not None:
            return
        self._mounts = host_system_mounts()
        uid, gid = self.settings.sandbox_ids()
        self._etc_files = {
            "/etc/passwd": (
                f"root:x:0:0:root:/root:/usr/sbin/nologin\n"
                f"sandbox:x:{uid}:{gid}:sandbox:/workspace:/bin/bash\n"
                f"nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
            ).encode(),
            "/etc/group": f"root:x:0:\nsandbox:x:{gid}:\nnogroup:x:65534:\n".encode(),
            "/etc/hosts": b"127.0.0.1 localhost sandbox\n::1 localhost\n",
            "/etc/nsswitch.conf": b"passwd: files\ngroup: files\nhosts: files\n",
        }
        if not self.settings.disable_bwrap:
            self._disable_userns = installed_bwrap_supports(self.settings.bwrap_path, "--disable-userns")
            if self._seccomp_program is None and self.settings.seccomp_enabled:
                self._seccomp_program = load_seccomp_program()

    @property
    def seccomp_active(self) -> bool:
        return self._seccomp_program is not None

    def spec(self, *, command: Sequence[str], info_fd: int, language: Language) -> SandboxSpec:
        """The sandbox shape for one start; opens the single-use descriptors it names."""
        assert self._mounts is not None
        data_files = tuple((memfd_with(path, data), path) for path, data in self._etc_files.items())
        seccomp_fd = memfd_with("seccomp", self._seccomp_program) if self._seccomp_program else None
        extra = [Mount("ro-bind-try", os.path.realpath(self.settings.sandbox_venv_path), SANDBOX_VENV_MOUNT)]
        return SandboxSpec(
            command=command,
            workspace=str(self.settings.workspace_dir),
            bwrap_path=self.settings.bwrap_path,
            system_mounts=self._mounts,
            extra_mounts=extra,
            env=base_environment(self.settings, language),
            tmpfs_size_bytes=self.settings.tmpfs_size_mb * 1024 * 1024,
            disable_userns=self._disable_userns,
            seccomp_fd=seccomp_fd,
            info_fd=info_fd,
            data_files=data_files,
        )

    def uid_gid(self) -> tuple[int, int] | None:
        """Drop to the sandbox user when the daemon is root; never run user code as root."""
        return self.settings.sandbox_ids() if self.settings.runs_as_root else None

    async def start_sandbox(self, language: Language) -> Sandbox:
        """Start a sandbox for ``language`` that waits for its launch message."""
        self.prepare()
        sandbox = Sandbox(language, self.settings, self.limits)
        factory = None if self.settings.disable_bwrap else self.spec
        await sandbox.start(self.spawner, factory, self.uid_gid())
        return sandbox

    async def aclose(self) -> None:
        """Stop the spawner helper (its sandboxes die with it)."""
        await self.spawner.aclose()

    async def execute_once(self, request: ExecuteRequest) -> ExecutionResult:
        """Run one request and stop the helper process: for one-shot callers (CLI, check)."""
        try:
            return await self.execute(request)
        finally:
            await self.aclose()

    async def execute(self, request: ExecuteRequest) -> ExecutionResult:
        """Run ``request`` to completion; never raises for anything the user code did."""
        job = job_from_request(request, self.settings)
        started = time.monotonic()
        sandbox = self.warm_sandbox_source(request.language) if self.warm_sandbox_source else None
        if sandbox is None:
            try:
                sandbox = await self.start_sandbox(request.language)
            except (SandboxStartError, OSError) as exc:
                # A host problem (bwrap missing, fds exhausted, seccomp refused), never the
                # user's: reported as crashed, the daemon carries on.
                log.error("sandbox_start_failed", error=str(exc))
                self.last_start_error = str(exc)
                return crashed_result(str(exc), TerminationReason.SANDBOX_ERROR, time.monotonic() - started)
        if self.settings.disable_bwrap:
            log.warning("isolation_disabled", execution_id=request.execution_id)
        try:
            result = await sandbox.run(job, request.stdin, str(self.settings.workspace_dir))
        finally:
            await sandbox.discard()
        # /health reports sandboxes that cannot start until one starts again.
        if result.termination_reason == TerminationReason.SANDBOX_ERROR:
            self.last_start_error = result.error or "the sandbox could not be created"
        else:
            self.last_start_error = None
        return result
