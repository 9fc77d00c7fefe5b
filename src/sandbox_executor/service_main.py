"""`sandbox-executor serve`: checks, wiring, uvicorn, and the signal-driven shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Generator
from typing import Any

import structlog
import uvicorn

from .checks import run_checks
from .config import Settings
from .engine import Engine
from .logging_setup import configure_logging
from .service import ExecutionService

log = structlog.get_logger(__name__)

SHUTDOWN_BUDGET_SECONDS = 2.0
# Half the budget: the interrupted sync's 503 and the server's stop fit in the rest.
SYNC_GRACE_SECONDS = 1.0
_EXIT_CODES = {signal.SIGTERM: 143, signal.SIGINT: 130}
_EXIT_REASONS = {signal.SIGTERM: "sigterm", signal.SIGINT: "sigint"}


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: shutdown is ours (see _Daemon.on_signal)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class _Daemon:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine = Engine(settings)
        self.reporter = _make_reporter(settings)
        self.service = ExecutionService(settings, self.engine, self.reporter)
        self.server: _Server | None = None
        self.exit_code = 0
        self._signalled: int | None = None

    @property
    def signalled(self) -> bool:
        return self._signalled is not None

    def on_signal(self, signum: int) -> None:
        if self._signalled is not None:
            # A second signal during shutdown: leave now, whatever is in flight.
            log.warning("second_signal_exit", signal=signal.Signals(signum).name)
            os._exit(_EXIT_CODES.get(signal.Signals(signum), 1))
        self._signalled = signum
        self.exit_code = _EXIT_CODES.get(signal.Signals(signum), 1)
        asyncio.get_running_loop().create_task(self.shutdown(signal.Signals(signum)))

    async def shutdown(self, signum: signal.Signals) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SHUTDOWN_BUDGET_SECONDS - 0.2
        # The budget is a promise to the orchestrator: if anything below hangs, exit anyway.
        loop.call_at(deadline + 0.1, os._exit, self.exit_code)
        log.info("shutdown_started", signal=signum.name)
        # A running dependency sync finishes within its grace or answers 503 before we stop.
        syncs = self.service.dependencies.shutdown(SYNC_GRACE_SECONDS) if self.service.dependencies else None
        syncs_stopped = asyncio.ensure_future(syncs) if syncs is not None else None
        try:
            aborted = await asyncio.wait_for(self.service.abort_all(), max(0.1, deadline - loop.time() - 0.6))
            log.info("executions_aborted", count=len(aborted))
        except Exception:
            log.exception("abort_failed")
        if self.reporter is not None:
            reason = _EXIT_REASONS.get(signum, signum.name.lower())
            remaining = max(0.05, deadline - loop.time() - 0.2)
            # The exit notice and the results' delivery share the remaining budget.
            await asyncio.gather(
                asyncio.wait_for(self.reporter.announce_exited(self.exit_code, reason), remaining),
                self.reporter.flush(remaining),
                return_exceptions=True,
            )
        if syncs_stopped is not None:
            await syncs_stopped
        if self.server is not None:
            self.server.should_exit = True

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.on_signal, signum)
        self.engine.prepare()
        if self.reporter is not None:
            await self.reporter.start()
        _attach_optional_parts(self.service, self.settings)
        await self.service.start()
        if self.service.pool is not None:
            await self.service.pool.start()
        from .api import create_app

        app = create_app(self.service)
        config = uvicorn.Config(
            app,
            host=self.settings.executor_host,
            port=self.settings.executor_port,
            log_config=None,
            access_log=True,
            timeout_graceful_shutdown=1,
            lifespan="off",
            server_header=False,
        )
        self.server = _Server(config)
        serving = asyncio.create_task(self.server.serve())
        while not self.server.started and not serving.done():  # noqa: ASYNC110 - uvicorn exposes a flag only
            await asyncio.sleep(0.01)
        if self.server.started:
            log.info(
                "executor_listening",
                host=self.settings.executor_host,
                port=self.settings.executor_port,
                isolation=self.settings.isolation,
                control_plane=bool(self.settings.control_plane_url),
            )
            if self.reporter is not None:
                self.reporter.announce_ready()
        await serving
        if not self.server.started and self._signalled is None:
            return 1
        if self.service.pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.service.pool.aclose(), 0.3)
        if self.reporter is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.reporter.aclose(), 0.2)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.engine.aclose(), 0.2)
        if self.service.dependencies is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.service.dependencies.aclose(), 0.2)
        return self.exit_code


def _make_reporter(settings: Settings) -> Any:
    try:
        from .control_plane import ControlPlaneReporter
    except ImportError:  # pragma: no cover - while the module is being written
        return None
    return ControlPlaneReporter(settings)


def _attach_optional_parts(service: ExecutionService, settings: Settings) -> None:
    with contextlib.suppress(ImportError):
        from .pool import WarmPool

        if settings.warm_pool_size > 0 and not settings.disable_bwrap:
            service.pool = WarmPool(service.engine, settings)
    with contextlib.suppress(ImportError):
        from .dependencies import DependencyManager

        on_change = service.pool.invalidate if service.pool is not None else None
        service.dependencies = DependencyManager(settings, on_change=on_change)


def serve() -> int:
    """Entry point of `sandbox-executor serve`; returns the process exit status."""
    settings = Settings()
    configure_logging(settings.log_level, settings.container_identity)
    if settings.disable_bwrap:
        log.warning(
            "isolation_disabled",
            detail="DISABLE_BWRAP=true: user code runs WITHOUT a sandbox. Development only.",
        )
    failures = [c for c in run_checks(settings) if not c.ok]
    if failures:
        for check in failures:
            log.error("startup_check_failed", check=check.name, detail=check.detail, remedy=check.remedy)
            print(
                f"sandbox-executor: {check.name}: {check.detail}\n  remedy: {check.remedy}", file=sys.stderr
            )
        return 1
    daemon = _Daemon(settings)
    code = asyncio.run(daemon.run())
    if daemon.signalled:
        # Interpreter teardown (FastAPI/pydantic) takes up to half a second we do not have
        # inside the 2 s shutdown budget; everything durable is already on disk.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
