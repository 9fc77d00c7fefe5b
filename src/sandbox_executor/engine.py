"""The execution engine: one request in, one truthful :class:`ExecutionResult` out."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Protocol

import structlog

from .config import Settings
from .errors import SandboxStartError
from .host import HostProfile
from .isolation import Level
from .models import ExecuteRequest, ExecutionResult, Language, TerminationReason
from .run_bounds import BoundsUnavailable
from .run_guards import RunGuards
from .runtimes import job_from_request
from .sandbox import Sandbox, SandboxFactory
from .spawner import Spawner

if TYPE_CHECKING:
    from .streaming import OutputSink

log = structlog.get_logger(__name__)


class WarmSource(Protocol):
    """Pre-started sandboxes (the warm pool): one for ``language`` now, or None."""

    def take(self, language: Language) -> Sandbox | None: ...


class Engine:
    """Runs executions: in a pre-started sandbox when the warm source has one, else cold."""

    def __init__(
        self,
        settings: Settings,
        sandboxes: SandboxFactory | None = None,
        warm_source: WarmSource | None = None,
    ) -> None:
        """``sandboxes`` defaults to a factory over a freshly probed host, a spawner and run
        guards of its own (one-shot callers: the CLI, the start-up check, tests)."""
        self.settings = settings
        if sandboxes is None:
            host = HostProfile.probe(settings)
            guards = RunGuards.detect(settings)
            sandboxes = SandboxFactory(settings, host, Spawner(settings.python_binary), guards)
        self.sandboxes = sandboxes
        self.warm_source = warm_source
        # The last sandbox start failure, cleared by the next successful run (for /health).
        self.last_start_error: str | None = None

    @property
    def host(self) -> HostProfile:
        return self.sandboxes.host

    @property
    def isolation(self) -> Level:
        return self.host.level

    @property
    def seccomp_active(self) -> bool:
        return self.host.seccomp_active

    async def aclose(self) -> None:
        """Stop the spawner helper (its sandboxes die with it)."""
        await self.sandboxes.aclose()

    async def execute_once(
        self, request: ExecuteRequest, output: OutputSink | None = None
    ) -> ExecutionResult:
        """Run one request and stop the helper process: for one-shot callers (CLI, check)."""
        try:
            return await self.execute(request, output)
        finally:
            await self.aclose()

    async def execute(self, request: ExecuteRequest, output: OutputSink | None = None) -> ExecutionResult:
        """Run ``request`` to completion; never raises for anything the user code did.

        ``output`` receives the program's stdout and stderr as they arrive (live output)."""
        job = job_from_request(request, self.settings)
        started = time.monotonic()
        sandbox = self.warm_source.take(request.language) if self.warm_source is not None else None
        if sandbox is None:
            try:
                sandbox = await self.sandboxes.start(request.language)
            except (SandboxStartError, BoundsUnavailable, OSError) as exc:
                # A host problem (bwrap missing, fds exhausted, seccomp refused), never the
                # user's: reported as crashed, the daemon carries on.
                log.error("sandbox_start_failed", error=str(exc))
                self.last_start_error = str(exc)
                elapsed = time.monotonic() - started
                return ExecutionResult.crashed(str(exc), TerminationReason.SANDBOX_ERROR, elapsed)
        if not self.host.isolated:
            log.warning("isolation_disabled", execution_id=request.execution_id)
        try:
            result = await sandbox.run(job, request.stdin, str(self.settings.workspace_dir), output=output)
        finally:
            self.sandboxes.retire(sandbox)
        # /health reports sandboxes that cannot start until one starts again.
        if result.termination_reason == TerminationReason.SANDBOX_ERROR:
            self.last_start_error = result.error or "the sandbox could not be created"
        else:
            self.last_start_error = None
        return result
