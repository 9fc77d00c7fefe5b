"""Shared fixtures of the security suite.

Two ways in: ``run_engine`` drives the real engine (real bwrap, real interpreters) for the
seccomp tests; the HTTP fixtures (added with the service) drive a real daemon process.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox_executor.config import Settings
from sandbox_executor.engine import Engine
from sandbox_executor.models import ExecuteRequest, ExecutionResult, Language
from tests.security.helpers import SECRETS, Daemon, start_daemon
from tests.support import levels, warm

EngineRun = Callable[..., Awaitable[ExecutionResult]]


def make_private_dir(prefix: str, owner: tuple[int, int] | None = None) -> Path:
    """A fresh directory under /tmp (not pytest's 0700 tree, which the sandbox user cannot
    traverse), owned by ``owner`` when given."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(path, 0o755)
    if owner is not None and os.geteuid() == 0:
        os.chown(path, *owner)
    return path


@pytest.fixture(scope="module")
def engine_workspace() -> Iterator[Path]:
    settings = Settings()
    path = make_private_dir("sec-ws-", settings.sandbox_ids())
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def run_engine(engine_workspace: Path) -> EngineRun:
    """Run code through a real Engine: ``await run_engine(code, "python", seccomp=False)``."""

    async def run(
        code: str,
        language: Language = "python",
        *,
        seccomp: bool = True,
        timeout: int = 10,
        event: dict[str, Any] | None = None,
    ) -> ExecutionResult:
        settings = Settings(
            workspace_path=str(engine_workspace),
            seccomp_enabled=seccomp,
            warm_pool_size=0,
            sandbox_isolation=levels.setting(),  # type: ignore[arg-type]
        )
        engine = Engine(settings)
        request = ExecuteRequest(
            execution_id="sec-probe", code=code, language=language, timeout=timeout, event=event
        )
        # SANDBOX_TEST_WARM_POOL=N: through a pre-started sandbox (tests/support/warm.py).
        return await warm.execute(engine, request)

    return run


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    """One real daemon per test module (SECURITY_DAEMON_USER=nobody runs it unprivileged)."""
    running = start_daemon()
    yield running
    log = running.server.log_path.read_text(errors="replace")
    running.close()
    # Whatever the attacks did, the daemon never logged its own secrets.
    assert not [secret for secret in SECRETS if secret in log]


@pytest.fixture
def fresh(daemon: Daemon) -> Iterator[Daemon]:
    """The module's daemon with an empty workspace before and after the test."""
    daemon.clean_workspace()
    yield daemon
    daemon.clean_workspace()
