"""`sandbox-executor serve`: wiring, uvicorn, and the signal-driven shutdown.

Start-up and shutdown are one :class:`contextlib.AsyncExitStack`: each part is built with
its collaborators, started, and its closing pushed right there, so the shutdown undoes the
start-up in reverse order, each step within its share of the 2 s budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Generator

import structlog
import uvicorn

from . import private_tmp
from .api import create_app
from .bootstrap import confine
from .checks import CheckResult, run_checks
from .config import MIB, Settings
from .control_plane import ControlPlaneReporter
from .dependencies import DependencyManager
from .engine import Engine
from .errors import SandboxStartError
from .files import WorkspaceFiles
from .host import HostProfile
from .journal import Journal, JournalInUse
from .logging_setup import configure_logging
from .mcp_http import McpEndpoint, ServiceBackend
from .models import ExecutionResult
from .pool import WarmPool
from .results_store import ResultStore
from .run_bounds import BoundsUnavailable
from .run_guards import RunGuards
from .sandbox import SandboxFactory
from .service import ExecutionService
from .spawner import Spawner

log = structlog.get_logger(__name__)

SHUTDOWN_BUDGET_SECONDS = 2.0
# Half the budget: the interrupted sync's 503 and the server's stop fit in the rest.
SYNC_GRACE_SECONDS = 1.0
_EXIT_CODES = {signal.SIGTERM: 143, signal.SIGINT: 130}
_EXIT_REASONS = {signal.SIGTERM: "sigterm", signal.SIGINT: "sigint"}


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: shutdown is ours (see Daemon.on_signal)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


async def _bounded(close: Callable[[], Awaitable[None]], seconds: float) -> None:
    """One closing step of the shutdown: bounded, and never in the way of the next one."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(close(), seconds)


class Daemon:
    """The parts of a serving executor, wired in :meth:`start` and unwound by its stack."""

    def __init__(self, settings: Settings, host: HostProfile, guards: RunGuards, journal: Journal) -> None:
        """``guards`` and ``journal`` are owned from now on (closed by the exit stack)."""
        self.settings = settings
        self.host = host
        self.guards = guards
        self.journal = journal
        self.reporter = ControlPlaneReporter(settings)
        self.server: _Server | None = None
        self.service: ExecutionService | None = None
        self.dependencies: DependencyManager | None = None
        self.files = WorkspaceFiles.from_settings(settings)
        self.mcp: McpEndpoint | None = None
        self.exit_code = 0
        self._signalled: int | None = None

    @property
    def signalled(self) -> bool:
        return self._signalled is not None

    async def start(self, stack: contextlib.AsyncExitStack) -> ExecutionService:
        """Build and start every part; each pushes its own closing onto ``stack``."""
        settings = self.settings
        stack.callback(self.journal.close)
        sandboxes = SandboxFactory(settings, self.host, Spawner(settings.python_binary), self.guards)
        stack.push_async_callback(_bounded, sandboxes.aclose, 0.2)
        await self.reporter.start()
        stack.push_async_callback(_bounded, self.reporter.aclose, 0.2)
        pool = WarmPool(sandboxes, settings) if settings.warm_pool_size > 0 else None
        dependencies = self.dependencies = DependencyManager(
            settings, on_change=pool.invalidate if pool is not None else None, host=self.host
        )
        stack.push_async_callback(_bounded, dependencies.aclose, 0.2)
        engine = Engine(settings, sandboxes, warm_source=pool)
        results = None
        if not settings.control_plane_url:
            # Standalone: a result is committed where GET can find it after a restart.
            results = ResultStore(
                settings.results_dir,
                retention_seconds=settings.executions_retention_seconds,
                retention_count=settings.executions_retention_count,
            )
            await asyncio.to_thread(results.prune)
        service = self.service = ExecutionService(
            settings,
            engine,
            self.reporter,
            pool=pool,
            dependencies=dependencies,
            journal=self.journal,
            guards=self.guards,
            results=results,
        )
        await self._restore_unfinished(service)
        await service.start()
        if pool is not None:
            await pool.start()
            stack.push_async_callback(_bounded, pool.aclose, 0.3)
        # /mcp: the SDK is imported on the first request only (idle memory budget).
        self.mcp = McpEndpoint(
            ServiceBackend(service),
            self.files,
            default_timeout=settings.default_timeout_seconds,
            listen_host=settings.executor_host,
            max_request_bytes=settings.max_request_bytes,
        )
        stack.push_async_callback(_bounded, self.mcp.aclose, 0.2)
        return service

    async def _restore_unfinished(self, service: ExecutionService) -> None:
        """Executions a killed predecessor accepted and never finished: each is reported
        ``crashed`` (or, if its result was committed before the completion was written,
        recorded with it)."""
        unfinished = self.journal.unfinished()
        for accepted in unfinished:
            stored = await asyncio.to_thread(self._stored_result, service, accepted.execution_id)
            await service.restore(accepted, stored)
        if unfinished:
            log.warning("executions_interrupted_by_restart", count=len(unfinished))

    def _stored_result(self, service: ExecutionService, execution_id: str) -> ExecutionResult | None:
        if service.results is not None:
            return service.results.load(execution_id)
        return self.reporter.stored_result(execution_id)

    def on_signal(self, signum: int) -> None:
        if self._signalled is not None:
            # A second signal during shutdown: leave now, whatever is in flight.
            log.warning("second_signal_exit", signal=signal.Signals(signum).name)
            os._exit(_EXIT_CODES.get(signal.Signals(signum), 1))
        self._signalled = signum
        self.exit_code = _EXIT_CODES.get(signal.Signals(signum), 1)
        asyncio.get_running_loop().create_task(self.shutdown(signal.Signals(signum)))

    async def shutdown(self, signum: signal.Signals) -> None:
        """Record every unfinished execution, tell the control plane, stop serving."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SHUTDOWN_BUDGET_SECONDS - 0.2
        # The budget is a promise to the orchestrator: if anything below hangs, exit anyway.
        loop.call_at(deadline + 0.1, os._exit, self.exit_code)
        log.info("shutdown_started", signal=signum.name)
        # A running dependency sync finishes within its grace or answers 503 before we stop.
        deps = self.dependencies
        syncs = asyncio.ensure_future(deps.shutdown(SYNC_GRACE_SECONDS)) if deps is not None else None
        if self.service is not None:
            budget = max(0.1, deadline - loop.time() - 0.6)
            try:
                aborted = await asyncio.wait_for(self.service.abort_all(), budget)
                log.info("executions_aborted", count=len(aborted))
            except Exception:
                log.exception("abort_failed")
        reason = _EXIT_REASONS.get(signum, signum.name.lower())
        remaining = max(0.05, deadline - loop.time() - 0.2)
        # The exit notice and the results' delivery share the remaining budget.
        await asyncio.gather(
            asyncio.wait_for(self.reporter.announce_exited(self.exit_code, reason), remaining),
            self.reporter.flush(remaining),
            return_exceptions=True,
        )
        if syncs is not None:
            await syncs
        if self.server is not None:
            self.server.should_exit = True

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.on_signal, signum)
        async with contextlib.AsyncExitStack() as stack:
            service = await self.start(stack)
            if not await self.serve(service) and self._signalled is None:
                return 1
        return self.exit_code

    async def serve(self, service: ExecutionService) -> bool:
        """Serve HTTP until shutdown; False when the server never started (port taken)."""
        config = uvicorn.Config(
            create_app(service, files=self.files, mcp=self.mcp),
            host=self.settings.executor_host,
            port=self.settings.executor_port,
            log_config=None,
            access_log=True,
            timeout_graceful_shutdown=1,
            lifespan="off",
            server_header=False,
        )
        self.server = _Server(config)
        # A signal during start-up: its shutdown found no server to stop.
        self.server.should_exit = self._signalled is not None
        serving = asyncio.create_task(self.server.serve())
        while not self.server.started and not serving.done():  # noqa: ASYNC110 - uvicorn exposes a flag only
            await asyncio.sleep(0.01)
        if self.server.started:
            log.info(
                "executor_listening",
                host=self.settings.executor_host,
                port=self.settings.executor_port,
                isolation=self.host.level,
                control_plane=bool(self.settings.control_plane_url),
            )
            self.reporter.announce_ready()
        await serving
        return bool(self.server.started)


def _refuse(check: str, detail: str, remedy: str) -> int:
    log.error("startup_check_failed", check=check, detail=detail, remedy=remedy)
    print(f"sandbox-executor: {check}: {detail}\n  remedy: {remedy}", file=sys.stderr)
    return 1


def _log_level(host: HostProfile) -> None:
    decision = host.isolation
    fields = {
        "level": host.level,
        "landlock_abi": host.facts.landlock_abi,
        "given_up": list(decision.given_up),
        "missing": list(decision.missing),
        "remedy": decision.remedy,
    }
    if host.level == "none":
        log.warning(
            "isolation_disabled",
            detail="SANDBOX_ISOLATION=none: user code runs WITHOUT a sandbox. Development only.",
            **fields,
        )
    else:
        log.info("isolation_level", **fields)


def serve() -> int:
    """Entry point of `sandbox-executor serve`; returns the process exit status."""
    # Sandboxes may share our uid (no user namespace at the landlock level): no process of
    # that uid may read our /proc/<pid>/environ (the tokens) or memory, or attach to us.
    confine.set_dumpable(False)
    settings = Settings()
    configure_logging(settings.log_level, settings.container_identity)
    try:
        host = HostProfile.probe(settings)
    except SandboxStartError as exc:
        return _refuse("isolation", exc.description, exc.solution)
    _log_level(host)
    if not host.uses_bwrap:
        private_tmp.sweep()  # what a killed predecessor left
    # RESULTS_DIR is not a start-up check: a daemon that cannot store acceptances starts,
    # refuses executions with 503 and says why in /health until it can (see journal.py).
    failures = [c for c in run_checks(settings, host, include_results_dir=False) if not c.ok]
    acquired = None if failures else _acquire(settings, failures)
    if acquired is None:
        for check in failures:
            _refuse(check.name, check.detail, check.remedy)
        return 1
    guards, journal = acquired
    daemon = Daemon(settings, host, guards, journal)
    code = asyncio.run(daemon.run())
    if daemon.signalled:
        # Interpreter teardown (FastAPI/pydantic) takes up to half a second we do not have
        # inside the 2 s shutdown budget; everything durable is already on disk.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _acquire(settings: Settings, failures: list[CheckResult]) -> tuple[RunGuards, Journal] | None:
    """The run guards (after the checks: their one-shot engine has its own) and the
    acceptance journal; None, with the reason appended to ``failures``, if one cannot be had."""
    try:
        guards = RunGuards.detect(settings)
    except BoundsUnavailable as exc:
        remedy = "set RUN_BOUNDS_MECHANISM=auto, or give the daemon the cgroup it names"
        failures.append(CheckResult("memory_bounds", False, exc.description, remedy))
        return None
    try:
        journal = Journal.open(settings.results_dir, min_free_bytes=result_room(settings))
    except JournalInUse as exc:
        guards.close()
        failures.append(
            CheckResult("results_dir", False, exc.description, "give every daemon its own RESULTS_DIR")
        )
        return None
    return guards, journal


def result_room(settings: Settings) -> int:
    """Free space RESULTS_DIR must have for an acceptance: room for its largest result."""
    return 2 * settings.max_output_bytes + settings.max_return_value_bytes + MIB
