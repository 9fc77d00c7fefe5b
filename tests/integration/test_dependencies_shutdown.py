"""SIGTERM or SIGINT while the real daemon runs a dependency sync whose pip install cannot finish.

The install is an sdist whose build waits for a file the loopback index never serves, so
pip is in flight when the signal arrives. The in-flight sync must answer 503
Executor.ShuttingDown within the shutdown budget, with one log line and no traceback; later
syncs answer the same; the half-installed tree is discarded and, after a restart, the
previous set is what executions import.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.local_index import LocalIndex, held_build_code, sdist_bytes
from tests.support.server import RunningServer, start_server, stop_server

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap")

UNPRIVILEGED = (4242, 4242)
IMPORT_ALPHA = "import alpha\ndef handler(event):\n    return alpha.VALUE\n"
# Lines that would mean a request was cancelled rather than answered.
TRACE_MARKERS = ("Traceback", "Exception in ASGI application", "CancelledError")


def _cases() -> list[Any]:
    cases: list[Any] = [
        pytest.param(None, signal.SIGTERM, 143, id="sigterm-root-daemon"),
        pytest.param(None, signal.SIGINT, 130, id="sigint-root-daemon"),
    ]
    if os.geteuid() == 0 and shutil.which("setpriv"):
        cases.append(pytest.param(UNPRIVILEGED, signal.SIGTERM, 143, id="sigterm-unprivileged-daemon"))
    return cases


@pytest.fixture
def index() -> Iterator[LocalIndex]:
    with LocalIndex() as idx:
        idx.add_wheel("alpha", "1.0", {"alpha.py": "VALUE = 42\n"})
        yield idx


@pytest.fixture
def base() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="deps-shutdown-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def sync(url: str, index: LocalIndex, deps: list[str], mode: str) -> httpx.Response:
    body = {
        "session_id": "sess_shutdown",
        "language_runtime": "python3.11",
        "python_package_index_url": index.url,
        "dependencies": deps,
        "sync_mode": mode,
    }
    return httpx.post(f"{url}/internal/session-config/sync", json=body, timeout=60)


def run(server: RunningServer, code: str) -> dict[str, Any]:
    body = {"execution_id": f"exec_{uuid.uuid4().hex[:16]}", "code": code, "language": "python"}
    resp = httpx.post(f"{server.url}/execute?wait=true", json=body, timeout=60)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def wait_until(predicate: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s"
        time.sleep(0.01)


@pytest.mark.parametrize(("run_as", "signum", "exit_status"), _cases())
def test_a_signal_during_a_sync_answers_503_and_keeps_the_previous_set(
    index: LocalIndex, base: Path, run_as: tuple[int, int] | None, signum: int, exit_status: int
) -> None:
    tag = secrets.token_hex(6)
    index.add(*sdist_bytes("held", "1.0", "held", held_build_code(index.url, tag)))
    # The held install is an sdist: source builds are off by default.
    env = {
        "WARM_POOL_SIZE": "0",
        "DEPENDENCY_INSTALL_TIMEOUT_SECONDS": "120",
        "DEPENDENCY_ALLOW_SDIST": "true",
    }
    server = start_server(env, base_dir=base, run_as=run_as)
    try:
        first = sync(server.url, index, ["alpha==1.0"], "replace")
        assert first.status_code == 200, first.text
        assert run(server, IMPORT_ALPHA)["return_value"] == 42
        link = Path(server.env["SANDBOX_VENV_PATH"])
        live = os.readlink(link)

        answer: dict[str, Any] = {}

        def in_flight() -> None:
            answer["response"] = sync(server.url, index, ["held"], "merge")
            answer["at"] = time.monotonic()

        thread = threading.Thread(target=in_flight)
        thread.start()
        wait_until(lambda: index.started(tag), "the held build")
        signalled = time.monotonic()
        server.signal(signum)
        wait_until(lambda: any("shutdown_started" in line for line in server.log_lines()), "shutdown")
        late = sync(server.url, index, ["alpha==1.0"], "replace")
        thread.join(30)
        code = server.wait(10)
        exited = time.monotonic()
    finally:
        stop_server(server)

    response = answer["response"]
    answered_after = answer["at"] - signalled
    print(
        f"\nin-flight sync answered {response.status_code} {answered_after:.3f} s after the signal; "
        f"daemon exited after {exited - signalled:.3f} s"
    )
    for refused in (response, late):
        assert refused.status_code == 503, refused.text
        assert refused.json()["error_code"] == "Executor.ShuttingDown"
        assert int(refused.headers["Retry-After"]) > 0
    assert answered_after < 2.0
    assert code == exit_status
    # One clean line for the interruption, and nothing that looks like a cancelled request.
    lines = server.log_lines()
    interrupted = [line for line in lines if "dependency_sync_interrupted" in line]
    assert len(interrupted) == 1, interrupted
    print(interrupted[0])
    assert json.loads(interrupted[0])["level"] == "warning"
    for marker in TRACE_MARKERS:
        assert not [line for line in lines if marker in line], marker
    # The link still names the previous tree; the half-installed one is gone.
    assert os.readlink(link) == live
    store = Path(str(link) + ".d")
    assert sorted(p.name for p in store.iterdir() if p.name.startswith(("v", "scratch"))) == [
        Path(live).name,
        Path(live).name + ".json",
    ]

    # A new daemon on the same directories imports the previous set.
    again = start_server(env, base_dir=base, run_as=run_as)
    try:
        assert run(again, IMPORT_ALPHA)["return_value"] == 42
    finally:
        stop_server(again)
