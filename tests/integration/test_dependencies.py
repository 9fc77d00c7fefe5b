"""Session dependency syncs end to end: real pip in real bwrap, a local PEP 503 index on
loopback, then real executions that import what was installed. No internet needed."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from sandbox_executor.config import Settings
from sandbox_executor.dependencies import DependencyManager, SyncRequest
from sandbox_executor.dependencies.pip_sandbox import PipRunner
from sandbox_executor.engine import Engine
from sandbox_executor.errors import Busy, InstallFailed, ShuttingDown
from sandbox_executor.models import ExecuteRequest, ExecutionResult
from tests.support.local_index import LocalIndex, held_build_code, sdist_bytes

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap")

SECRET = "s3cr3t-" + secrets.token_hex(8)
PWNED = f"/tmp/pwned-{secrets.token_hex(6)}"


def _evil_build_code(base: str) -> str:
    # Runs inside pip's sandbox while the sdist is built: everything an attacker would try.
    return f"""
import glob
secret = {SECRET!r}
FINDINGS["ran"] = True
FINDINGS["uid"] = os.getuid()
FINDINGS["env_keys"] = sorted(os.environ)
FINDINGS["secret_in_env"] = any(secret in v for v in os.environ.values())
leaks = []
for path in glob.glob("/proc/*/environ") + glob.glob("/proc/*/cmdline"):
    try:
        with open(path, "rb") as fh:
            if secret.encode() in fh.read():
                leaks.append(path)
    except OSError:
        pass
FINDINGS["secret_in_proc"] = leaks
attempts = {{}}
for target in ({PWNED!r}, {base!r} + "/ws/pwned", {base!r} + "/open/pwned",
               {base!r} + "/venv.d/pwned", {base!r} + "/results/pwned"):
    try:
        with open(target, "w") as fh:
            fh.write("pwned")
        attempts[target] = "written"
    except OSError as exc:
        attempts[target] = type(exc).__name__
FINDINGS["writes"] = attempts
try:
    with open({base!r} + "/secret.txt") as fh:
        FINDINGS["secret_file"] = fh.read()
except OSError as exc:
    FINDINGS["secret_file"] = type(exc).__name__
"""


@pytest.fixture(scope="module")
def index() -> Iterator[LocalIndex]:
    with LocalIndex() as idx:
        idx.add_wheel("alpha", "1.0", {"alpha.py": "VALUE = 1\n"})
        idx.add_wheel("alpha", "2.0", {"alpha.py": "VALUE = 2\n"})
        idx.add_wheel("beta", "1.0", {"beta.py": "import alpha\nVALUE = alpha.VALUE + 40\n"}, ["alpha>=1.0"])
        idx.add_wheel("gamma", "1.0", {"gamma.py": "VALUE = 'g'\n"})
        yield idx


@pytest.fixture(scope="module")
def pip_runtime_root() -> Iterator[Path]:
    # Every test has its own store; they share pip's compiled copy (built once, ~1 s).
    path = Path(tempfile.mkdtemp(prefix="deps-pip-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def new_manager(settings: Settings, pip_runtime_root: Path) -> DependencyManager:
    return DependencyManager(settings, pip=PipRunner(settings, runtime_root=pip_runtime_root))


@pytest.fixture
def base() -> Iterator[Path]:
    # Not pytest's tmp_path: it sits under a 0700 directory the sandbox uid cannot traverse.
    path = Path(tempfile.mkdtemp(prefix="deps-it-"))
    path.chmod(0o755)
    (path / "ws").mkdir()
    (path / "state").mkdir(mode=0o700)
    # Readable and writable by the sandbox uid on the host: only the sandbox keeps them out.
    (path / "secret.txt").write_text(SECRET)
    (path / "secret.txt").chmod(0o644)
    (path / "open").mkdir()
    (path / "open").chmod(0o777)
    (path / "results").mkdir()
    if os.geteuid() == 0:
        os.chown(path / "ws", 65534, 65534)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def settings(base: Path) -> Settings:
    return Settings(
        workspace_path=str(base / "ws"),
        sandbox_venv_path=base / "venv",
        results_dir=base / "results",
        dependency_install_timeout_seconds=60,
    )


@pytest.fixture
def manager(settings: Settings, pip_runtime_root: Path) -> DependencyManager:
    return new_manager(settings, pip_runtime_root)


@pytest.fixture
def sdist_settings(settings: Settings) -> Settings:
    # Source builds are off by default (wheels only); these tests build sdists on purpose.
    return settings.model_copy(update={"dependency_allow_sdist": True})


@pytest.fixture
def sdist_manager(sdist_settings: Settings, pip_runtime_root: Path) -> DependencyManager:
    return new_manager(sdist_settings, pip_runtime_root)


def req(index: LocalIndex, deps: list[str], mode: str = "replace") -> SyncRequest:
    return SyncRequest.model_validate(
        {
            "session_id": "sess-1",
            "python_package_index_url": index.url,
            "dependencies": deps,
            "sync_mode": mode,
        }
    )


async def run_python(settings: Settings, code: str) -> ExecutionResult:
    engine = Engine(settings)
    return await engine.execute(
        ExecuteRequest(execution_id="exec_" + secrets.token_hex(4), code=code, language="python")
    )


def versions(body: dict[str, Any]) -> dict[str, str]:
    return {d["name"]: d["version"] for d in body["installed_dependencies"]}


async def test_replace_installs_and_next_execution_imports(
    manager: DependencyManager, settings: Settings, index: LocalIndex
) -> None:
    body = await manager.sync(req(index, ["beta"]))
    assert body["status"] == "completed" and body["error"] == ""
    assert versions(body) == {"alpha": "2.0", "beta": "1.0"}
    for dep in body["installed_dependencies"]:
        assert dep["install_location"] == "/opt/sandbox-venv"
        assert dep["is_from_template"] is False
        assert datetime.fromisoformat(dep["install_time"]).tzinfo is not None
    started, completed = body["started_at"], body["completed_at"]
    assert datetime.fromisoformat(started) <= datetime.fromisoformat(completed)
    assert manager.installed() == body["installed_dependencies"]
    result = await run_python(settings, "import beta\ndef handler(event):\n    return beta.VALUE\n")
    assert result.status == "success", result.stderr
    assert result.return_value == 42
    # The live tree is read-only for user code.
    result = await run_python(
        settings,
        "def handler(event):\n    open('/opt/sandbox-venv/x', 'w')\n",
    )
    assert result.status == "failed" and "Read-only file system" in result.stderr


async def test_merge_adds_and_a_new_spec_wins_and_replace_removes(
    manager: DependencyManager, settings: Settings, index: LocalIndex
) -> None:
    await manager.sync(req(index, ["alpha==1.0"]))
    body = await manager.sync(req(index, ["gamma"], "merge"))
    assert versions(body) == {"alpha": "1.0", "gamma": "1.0"}
    code = (
        "import importlib.util\n"
        "def handler(event):\n"
        "    out = {}\n"
        "    for name in ('alpha', 'gamma'):\n"
        "        if importlib.util.find_spec(name):\n"
        "            out[name] = __import__(name).VALUE\n"
        "    return out\n"
    )
    result = await run_python(settings, code)
    assert result.return_value == {"alpha": 1, "gamma": "g"}, result.stderr

    body = await manager.sync(req(index, ["Alpha==2.0"], "merge"))
    assert versions(body) == {"alpha": "2.0", "gamma": "1.0"}
    result = await run_python(settings, code)
    assert result.return_value == {"alpha": 2, "gamma": "g"}, result.stderr

    body = await manager.sync(req(index, ["gamma"]))
    assert versions(body) == {"gamma": "1.0"}
    result = await run_python(settings, code)
    assert result.return_value == {"gamma": "g"}, result.stderr

    body = await manager.sync(req(index, []))
    assert body["installed_dependencies"] == []
    result = await run_python(settings, code)
    assert result.return_value == {}, result.stderr


async def test_missing_package_is_422_and_previous_set_stays(
    manager: DependencyManager, settings: Settings, index: LocalIndex
) -> None:
    await manager.sync(req(index, ["alpha==1.0"]))
    live = os.path.realpath(settings.sandbox_venv_path)
    before = manager.installed()
    with pytest.raises(InstallFailed) as info:
        await manager.sync(req(index, ["alpha==1.0", "no-such-project"]))
    err = info.value
    assert err.error_code == "Executor.DependencyInstallFailed"
    assert "no-such-project" in err.detail
    assert os.path.realpath(settings.sandbox_venv_path) == live
    assert manager.installed() == before
    # The failed tree is gone; only the live one (and its manifest) remain.
    store_root = Path(str(settings.sandbox_venv_path) + ".d")
    assert sorted(p.name for p in store_root.iterdir() if p.name.startswith("v")) == ["v1", "v1.json"]
    code = "import alpha\ndef handler(event):\n    return alpha.VALUE\n"
    result = await run_python(settings, code)
    assert result.return_value == 1, result.stderr
    # A version that does not exist fails the same way.
    with pytest.raises(InstallFailed):
        await manager.sync(req(index, ["alpha==9.9"]))


async def test_unchanged_resync_runs_no_pip(
    manager: DependencyManager, settings: Settings, index: LocalIndex, pip_runtime_root: Path
) -> None:
    first = await manager.sync(req(index, ["gamma", "beta"]))
    seen = index.request_count()
    live = os.path.realpath(settings.sandbox_venv_path)
    for again in (
        req(index, ["beta", "gamma"]),  # order does not matter
        req(index, ["Beta", " gamma"]),  # nor spelling of the name
        req(index, [], "merge"),  # merging nothing changes nothing
        req(index, ["gamma"], "merge"),  # nor merging what is there
    ):
        body = await manager.sync(again)
        assert body["installed_dependencies"] == first["installed_dependencies"]
    assert index.request_count() == seen, "a no-op re-sync must not contact the index"
    assert os.path.realpath(settings.sandbox_venv_path) == live
    # A fresh manager (daemon restart) knows the live set from its manifest.
    restarted = new_manager(settings, pip_runtime_root)
    assert restarted.installed() == first["installed_dependencies"]
    await restarted.sync(req(index, ["gamma", "beta"]))
    assert index.request_count() == seen


async def test_second_sync_waits_or_gets_503_and_executions_keep_running(
    manager: DependencyManager, settings: Settings, index: LocalIndex
) -> None:
    index.gate.clear()
    try:
        seen = index.request_count()
        first = asyncio.create_task(manager.sync(req(index, ["alpha==1.0"])))
        deadline = time.monotonic() + 30
        while index.request_count() == seen and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert index.request_count() > seen, "pip never reached the index"
        # An execution runs normally while pip is blocked on the index.
        result = await run_python(settings, "def handler(event):\n    return 'still here'\n")
        assert result.return_value == "still here"
        # A second sync that cannot get the lock in time is told to come back.
        manager.lock_wait_seconds = 0.3
        with pytest.raises(Busy) as busy:
            await manager.sync(req(index, ["gamma"]))
        assert busy.value.error_code == "Executor.Busy"
        assert busy.value.retry_after is not None and busy.value.retry_after > 0
        # One that may wait runs after the first, on top of its result.
        manager.lock_wait_seconds = 30
        second = asyncio.create_task(manager.sync(req(index, ["gamma"], "merge")))
        await asyncio.sleep(0.2)
        assert not second.done()
    finally:
        index.gate.set()
    assert versions(await first) == {"alpha": "1.0"}
    assert versions(await second) == {"alpha": "1.0", "gamma": "1.0"}


async def test_install_timeout_is_422_and_leaves_nothing_running(
    base: Path, index: LocalIndex, pip_runtime_root: Path
) -> None:
    settings = Settings(
        workspace_path=str(base / "ws"),
        sandbox_venv_path=base / "venv",
        results_dir=base / "results",
        dependency_install_timeout_seconds=1,
    )
    manager = new_manager(settings, pip_runtime_root)
    await asyncio.to_thread(manager.pip.locate_pip)  # compile pip outside the 1 s budget
    index.gate.clear()
    try:
        started = time.monotonic()
        with pytest.raises(InstallFailed) as info:
            await manager.sync(req(index, ["gamma"]))
        elapsed = time.monotonic() - started
    finally:
        index.gate.set()
    assert "timed out" in info.value.description
    assert elapsed < 10
    # Neither bwrap (host paths in its argv) nor pip inside it (the index URL) survived.
    markers = (str(base / "venv.d").encode(), index.url.encode())
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        assert not any(m in cmdline for m in markers), cmdline
    assert not (base / "venv").exists()


async def test_sdist_build_cannot_see_daemon_secrets_or_write_outside(
    sdist_manager: DependencyManager,
    sdist_settings: Settings,
    index: LocalIndex,
    base: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("INTERNAL_API_TOKEN", SECRET)
    monkeypatch.setenv("SANDBOX_EXECUTOR_TEST_SECRET", SECRET)
    name, data = sdist_bytes("evil-pkg", "1.0", "evil_probe", _evil_build_code(str(base)))
    index.add(name, data)
    try:
        body = await sdist_manager.sync(req(index, ["evil-pkg"]))
    finally:
        index.files.pop(name, None)
    assert versions(body) == {"evil-pkg": "1.0"}
    result = await run_python(
        sdist_settings, "import evil_probe\ndef handler(event):\n    return evil_probe.FINDINGS\n"
    )
    assert result.status == "success", result.stderr
    findings = result.return_value
    assert findings["ran"] is True  # the build code really ran, inside pip's sandbox
    assert findings["secret_in_env"] is False
    assert "INTERNAL_API_TOKEN" not in findings["env_keys"]
    assert "SANDBOX_EXECUTOR_TEST_SECRET" not in findings["env_keys"]
    assert findings["secret_in_proc"] == []
    assert findings["secret_file"] in ("FileNotFoundError", "PermissionError")
    if os.geteuid() == 0:
        assert findings["uid"] == sdist_settings.sandbox_uid
    # Whatever the build believed, nothing reached the host outside its target.
    for host_path in (
        PWNED,
        base / "ws" / "pwned",
        base / "open" / "pwned",
        base / "venv.d" / "pwned",
        base / "results" / "pwned",
    ):
        assert not os.path.exists(host_path), f"the build wrote {host_path}"
    for target, outcome in findings["writes"].items():
        if target != PWNED:  # the sandbox's own /tmp is a private tmpfs
            assert outcome != "written", target


async def test_pip_runs_from_a_compiled_read_only_copy(
    manager: DependencyManager, index: LocalIndex, pip_runtime_root: Path
) -> None:
    await manager.sync(req(index, ["gamma"]))
    copies = list(pip_runtime_root.glob("pip-runtime-*"))
    assert len(copies) == 1
    pip_dir = copies[0] / "pip"
    assert manager.pip.locate_pip()[0] == str(pip_dir)
    assert list((pip_dir / "__pycache__").glob("*.cpython-311.pyc"))
    for path in (copies[0], pip_dir, pip_dir / "__main__.py"):
        mode = path.stat().st_mode
        assert path.stat().st_uid == os.geteuid() and not mode & 0o022, path


def _add_held_package(index: LocalIndex, name: str) -> str:
    """A project whose install stays in flight until ``index.release(tag)``; returns tag."""
    tag = secrets.token_hex(6)
    index.add(*sdist_bytes(name, "1.0", name.replace("-", "_"), held_build_code(index.url, tag)))
    return tag


async def _until(predicate: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s"
        await asyncio.sleep(0.02)


def _pip_processes(settings: Settings) -> list[bytes]:
    marker = str(settings.sandbox_venv_path).encode() + b".d"
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if marker in cmdline:
            found.append(cmdline)
    return found


async def test_shutdown_kills_a_sync_past_its_grace_and_keeps_the_previous_set(
    sdist_manager: DependencyManager, sdist_settings: Settings, index: LocalIndex
) -> None:
    await sdist_manager.sync(req(index, ["alpha==1.0"]))
    live = os.path.realpath(sdist_settings.sandbox_venv_path)
    tag = _add_held_package(index, "held-one")
    syncing = asyncio.create_task(sdist_manager.sync(req(index, ["held-one"], "merge")))
    await _until(lambda: index.started(tag), "the held build")
    started = time.monotonic()
    await sdist_manager.shutdown(grace=0.2)
    stopped_after = time.monotonic() - started
    assert syncing.done(), "shutdown returned while the sync still ran"
    with pytest.raises(ShuttingDown) as info:
        await syncing
    assert info.value.error_code == "Executor.ShuttingDown" and info.value.retry_after
    assert 0.2 <= stopped_after < 0.2 + 1.0, stopped_after
    # The half-installed tree, its scratch directory and pip are gone; v1 is still live.
    assert os.path.realpath(sdist_settings.sandbox_venv_path) == live
    store_root = Path(str(sdist_settings.sandbox_venv_path) + ".d")
    assert sorted(p.name for p in store_root.iterdir() if p.name.startswith(("v", "scratch"))) == [
        "v1",
        "v1.json",
    ]
    assert _pip_processes(sdist_settings) == []
    # Later syncs are refused at once, without touching the index.
    seen = index.request_count()
    with pytest.raises(ShuttingDown):
        await sdist_manager.sync(req(index, ["gamma"], "merge"))
    assert index.request_count() == seen
    result = await run_python(sdist_settings, "import alpha\ndef handler(event):\n    return alpha.VALUE\n")
    assert result.return_value == 1, result.stderr


async def test_shutdown_lets_a_sync_finish_within_its_grace(
    sdist_manager: DependencyManager, sdist_settings: Settings, index: LocalIndex
) -> None:
    tag = _add_held_package(index, "held-two")
    syncing = asyncio.create_task(sdist_manager.sync(req(index, ["held-two"])))
    await _until(lambda: index.started(tag), "the held build")
    stopping = asyncio.create_task(sdist_manager.shutdown(grace=60))
    await asyncio.sleep(0)
    # Closing: a new sync is refused while the running one goes on.
    with pytest.raises(ShuttingDown):
        await sdist_manager.sync(req(index, ["gamma"], "merge"))
    assert not syncing.done() and not stopping.done()
    index.release(tag)
    body = await syncing
    await asyncio.wait_for(stopping, 5)
    assert body["error"] == "" and versions(body) == {"held-two": "1.0"}
    result = await run_python(
        sdist_settings, "import held_two\ndef handler(event):\n    return held_two.FINDINGS\n"
    )
    assert result.return_value == {"released": True}, result.stderr


async def test_shutdown_without_a_running_sync_returns_at_once(manager: DependencyManager) -> None:
    started = time.monotonic()
    await manager.shutdown(grace=5)
    assert time.monotonic() - started < 0.1
    with pytest.raises(ShuttingDown):
        await manager.sync(SyncRequest())
