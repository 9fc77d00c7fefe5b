"""Every isolation level this host can give, run for real: ordinary code (cold and from the
warm pool), a dependency sync whose package then imports, and what `check` says.

The security suite runs whole at a forced level (``SANDBOX_TEST_ISOLATION``, see
tests/support/levels.py); this module covers every level in every pass.
"""

from __future__ import annotations

import secrets
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox_executor.checks import run_checks
from sandbox_executor.config import Settings
from sandbox_executor.dependencies import DependencyManager, SyncRequest
from sandbox_executor.dependencies.pip_sandbox import PipRunner
from sandbox_executor.engine import Engine
from sandbox_executor.isolation_probes import detect
from sandbox_executor.models import ExecuteRequest, ExecutionResult
from tests.conftest import make_workspace
from tests.support import warm
from tests.support.local_index import LocalIndex

LEVELS = ("bwrap", "bwrap-compat", "landlock", "none")


@pytest.fixture(params=LEVELS)
def level(request: pytest.FixtureRequest) -> str:
    decision, _ = detect(Settings(sandbox_isolation=request.param))
    if decision.level is None:
        pytest.skip(f"not available on this host: {decision.refusal}")
    return str(request.param)


@pytest.fixture
def base() -> Iterator[Path]:
    path = make_workspace("levels-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def settings_for(level: str, base: Path, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "sandbox_isolation": level,
        "workspace_path": str(base),
        "sandbox_venv_path": Path(tempfile.gettempdir()) / f"no-venv-{secrets.token_hex(4)}",
        "warm_pool_size": 0,
    }
    return Settings(**{**values, **extra})


async def run(
    settings: Settings, code: str, language: str = "python", *, warm_size: int = 0
) -> ExecutionResult:
    request = ExecuteRequest(
        execution_id="lvl_" + secrets.token_hex(4),
        code=code,
        language=language,  # type: ignore[arg-type]
        event={"n": 21},
        timeout=20,
    )
    return await warm.execute(Engine(settings), request, size=warm_size)


PYTHON = r"""
import multiprocessing, os, subprocess, tempfile
def handler(event):
    with multiprocessing.Pool(2) as pool:
        squares = pool.map(abs, [-1, -2, -3])
    piped = subprocess.run("echo piped | tr a-z A-Z", shell=True, capture_output=True, text=True).stdout
    with tempfile.NamedTemporaryFile("w+", delete=False) as fh:
        fh.write("tmp")
    home = os.path.join(os.environ["HOME"], ".cache-test")
    open(home, "w").write("home")
    open("in-workspace.txt", "w").write("ws")
    return {"mp": squares, "piped": piped, "tmp": open(fh.name).read(), "home": open(home).read(),
            "n": event["n"] * 2, "tmpdir": tempfile.gettempdir()}
"""
NODE = r"""
const fs = require('fs');
const path = require('path');
exports.handler = async (event) => {
  const file = path.join(require('os').tmpdir(), 'node.txt');
  fs.writeFileSync(file, 'tmp');
  const child = require('child_process').execSync('echo child').toString().trim();
  return { n: event.n * 2, tmp: fs.readFileSync(file, 'utf8'), child };
};
"""
SHELL = r"""
echo "a b c" | tr ' ' '\n' | sort -r | paste -sd, -
echo tmp > "$TMPDIR/sh.txt" && cat "$TMPDIR/sh.txt"
grep -o '[0-9]*' "$SANDBOX_EVENT_FILE"
uname -n
"""


async def test_ordinary_code_at_every_level(level: str, base: Path) -> None:
    settings = settings_for(level, base)
    python = await run(settings, PYTHON)
    assert python.status == "success", python.stderr
    tmpdir = python.return_value.pop("tmpdir")
    assert python.return_value == {"mp": [1, 2, 3], "piped": "PIPED\n", "tmp": "tmp", "home": "home", "n": 42}
    if level in ("landlock", "none"):  # a private directory, gone with its sandbox
        assert Path(tmpdir).name.startswith("sandbox-tmp-") and not Path(tmpdir).exists()
    else:
        assert tmpdir == "/tmp"
    assert "in-workspace.txt" in python.artifacts
    node = await run(settings, NODE, "javascript")
    assert node.status == "success", node.stderr
    assert node.return_value == {"n": 42, "tmp": "tmp", "child": "child"}
    shell = await run(settings, SHELL, "shell")
    assert shell.status == "success", shell.stderr
    # Only bwrap sets its own hostname (bwrap-compat gives it up: sethostname is refused).
    hostname = "sandbox" if level == "bwrap" else socket.gethostname()
    assert shell.stdout == f"c,b,a\ntmp\n21\n{hostname}\n"
    # The warm pool starts its sandboxes the same way at every level.
    warm_run = await run(settings, PYTHON, warm_size=1)
    assert warm_run.status == "success" and warm_run.return_value["mp"] == [1, 2, 3], warm_run.stderr
    assert not Path(warm_run.return_value["tmpdir"]).exists() or level in ("bwrap", "bwrap-compat")


@pytest.fixture(scope="module")
def index() -> Iterator[LocalIndex]:
    with LocalIndex() as idx:
        idx.add_wheel("levelpkg", "1.0", {"levelpkg.py": "VALUE = 'synced'\n"})
        yield idx


async def test_a_synced_package_imports_at_every_level(level: str, base: Path, index: LocalIndex) -> None:
    """pip runs at the level too (bwrap-compat's options, or confined like the executions)."""
    state = Path(tempfile.mkdtemp(prefix="levels-deps-"))
    state.chmod(0o755)
    try:
        settings = settings_for(level, base, sandbox_venv_path=state / "venv", results_dir=state / "results")
        manager = DependencyManager(settings, pip=PipRunner(settings, runtime_root=None))
        body = await manager.sync(
            SyncRequest.model_validate(
                {"session_id": "s", "python_package_index_url": index.url, "dependencies": ["levelpkg"]}
            )
        )
        await manager.aclose()
        assert body["status"] == "completed", body
        result = await run(settings, "import levelpkg\ndef handler(event):\n    return levelpkg.VALUE\n")
        assert result.status == "success", result.stderr
        assert result.return_value == "synced"
    finally:
        shutil.rmtree(state, ignore_errors=True)


def test_check_names_the_level_what_it_gives_up_and_the_remedy(level: str, base: Path) -> None:
    checks = {c.name: c for c in run_checks(settings_for(level, base), include_results_dir=False)}
    isolation, sandbox = checks["isolation"], checks["sandbox"]
    assert isolation.ok and isolation.detail.startswith(level), isolation
    assert sandbox.ok and f"at level {level}" in sandbox.detail, sandbox
    if level == "bwrap":
        assert isolation.notes == () and isolation.remedy == ""
    else:
        assert any(note.startswith("gives up: ") for note in isolation.notes), isolation.notes
        assert isolation.remedy, isolation
    if level == "landlock":
        assert "Landlock ABI" in isolation.detail
