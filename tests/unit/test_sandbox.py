"""The running sandbox and the engine around it: real bwrap, real interpreters, fast cases."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import AsyncIterator, Callable

import pytest

from sandbox_executor.config import Settings
from sandbox_executor.engine import Engine
from sandbox_executor.errors import SandboxStartError
from sandbox_executor.host import HostProfile
from sandbox_executor.models import ExecuteRequest, Language, Status, TerminationReason
from sandbox_executor.runtimes import job_from_request
from sandbox_executor.sandbox import Sandbox, SandboxFactory
from sandbox_executor.spawner import Spawner


@pytest.fixture
async def factory(settings: Settings) -> AsyncIterator[SandboxFactory]:
    made = SandboxFactory(settings, HostProfile.probe(settings), Spawner(settings.python_binary))
    yield made
    await made.aclose()


def _request(code: str, language: Language = "python", **fields: object) -> ExecuteRequest:
    return ExecuteRequest(execution_id="unit", code=code, language=language, **fields)  # type: ignore[arg-type]


async def _until(predicate: Callable[[], bool], seconds: float = 10.0) -> None:
    async with asyncio.timeout(seconds):
        while not predicate():
            await asyncio.sleep(0.005)


async def test_a_started_sandbox_waits_then_serves_one_run(
    factory: SandboxFactory, settings: Settings
) -> None:
    sandbox = await factory.start("python")
    await _until(lambda: sandbox.interpreter_started)
    assert sandbox.alive and not sandbox.used
    job = job_from_request(
        _request("def handler(event):\n    print('hi')\n    return event\n", event={"x": 1}), settings
    )
    result = await sandbox.run(job, None, str(settings.workspace_dir))
    await sandbox.discard()
    assert result.status == Status.SUCCESS, result.stderr
    assert result.return_value == {"x": 1} and result.stdout == "hi\n"
    assert result.metrics is not None and result.metrics.cpu_time_ms is not None
    assert sandbox.used and not sandbox.alive
    with pytest.raises(AssertionError, match="exactly one"):
        await sandbox.run(job, None, str(settings.workspace_dir))


async def test_discard_kills_a_waiting_sandbox(factory: SandboxFactory) -> None:
    sandbox = await factory.start("shell")
    await _until(lambda: sandbox.interpreter_started)
    await sandbox.discard()
    assert not sandbox.alive
    code, _ = sandbox.exited.result()
    assert code != 0


async def test_the_stdin_and_the_deadline_reach_the_run(factory: SandboxFactory, settings: Settings) -> None:
    sandbox = await factory.start("shell")
    job = job_from_request(_request("read line; echo got:$line; sleep 30", "shell", timeout=1), settings)
    result = await sandbox.run(job, "abc\n", str(settings.workspace_dir))
    await sandbox.discard()
    assert result.status == Status.TIMEOUT and result.termination_reason == TerminationReason.TIMEOUT
    assert result.stdout == "got:abc\n" and result.stderr.endswith("Execution timeout after 1 seconds")
    assert 1.0 <= result.execution_time < 3.0


def _unstartable(settings: Settings) -> SandboxFactory:
    """A factory whose first exec fails: bwrap gone (bwrap levels) or the interpreter."""
    host = HostProfile.probe(settings)
    if host.uses_bwrap:
        host = dataclasses.replace(host, bwrap_path="/nonexistent/bwrap")
    else:
        settings = settings.model_copy(update={"python_binary": "/nonexistent/python3"})
    return SandboxFactory(settings, host, Spawner("/usr/bin/python3"))


async def test_a_sandbox_that_cannot_start_raises(settings: Settings) -> None:
    factory = _unstartable(settings)
    try:
        with pytest.raises(SandboxStartError):
            await factory.start("python")
    finally:
        await factory.aclose()


async def test_engine_reports_a_start_failure_as_crashed(settings: Settings) -> None:
    engine = Engine(settings, _unstartable(settings))
    result = await engine.execute_once(_request("def handler(event):\n    return 1\n"))
    assert result.status == Status.CRASHED and result.termination_reason == TerminationReason.SANDBOX_ERROR
    assert engine.last_start_error is not None and "cannot start the sandbox" in engine.last_start_error


class _OneWarm:
    """A warm source holding one pre-started sandbox."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox: Sandbox | None = sandbox
        self.asked: list[Language] = []

    def take(self, language: Language) -> Sandbox | None:
        self.asked.append(language)
        sandbox, self.sandbox = self.sandbox, None
        return sandbox if sandbox is not None and sandbox.language == language else None


async def test_engine_takes_from_its_warm_source_first(factory: SandboxFactory, settings: Settings) -> None:
    warm = await factory.start("python")
    source = _OneWarm(warm)
    engine = Engine(settings, factory, warm_source=source)
    first = await engine.execute(_request("def handler(event):\n    return 'warm'\n"))
    second = await engine.execute(_request("def handler(event):\n    return 'cold'\n"))
    assert (first.return_value, second.return_value) == ("warm", "cold")
    assert warm.used and not warm.alive and source.asked == ["python", "python"]
    assert engine.last_start_error is None


async def test_without_isolation_the_command_runs_bare_in_the_workspace(
    make_settings: Callable[..., Settings],
) -> None:
    engine = Engine(make_settings(sandbox_isolation="none"))
    code = "import os\ndef handler(e):\n    return [os.getcwd(), os.getenv('HOME'), os.getenv('TMPDIR')]\n"
    result = await engine.execute_once(_request(code))
    assert result.status == Status.SUCCESS, result.stderr
    cwd, home, tmp = result.return_value
    assert cwd == str(engine.settings.workspace_dir)
    # A private directory of its own, gone with the sandbox.
    assert home == tmp and os.path.basename(tmp).startswith("sandbox-tmp-") and not os.path.exists(tmp)
