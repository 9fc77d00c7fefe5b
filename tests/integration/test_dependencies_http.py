"""POST /internal/session-config/sync through the real daemon (`sandbox-executor serve`),
as root and as an unprivileged daemon, against a local PEP 503 index on loopback."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.local_index import LocalIndex, sdist_bytes
from tests.support.server import RunningServer, start_server, stop_server

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap")

ERROR_KEYS = {"error_code", "description", "error_detail", "solution", "request_id"}
UNPRIVILEGED = (4242, 4242)
TOKEN = "tok-" + uuid.uuid4().hex


def _modes() -> list[Any]:
    modes: list[Any] = [pytest.param(None, id="root-daemon")]
    if os.geteuid() == 0 and shutil.which("setpriv"):
        modes.append(pytest.param(UNPRIVILEGED, id="unprivileged-daemon"))
    return modes


@pytest.fixture(scope="module")
def index() -> Iterator[LocalIndex]:
    with LocalIndex() as idx:
        idx.add_wheel("alpha", "1.0", {"alpha.py": "VALUE = 1\n"})
        idx.add_wheel("beta", "1.0", {"beta.py": "import alpha\nVALUE = alpha.VALUE + 41\n"}, ["alpha"])
        # Published as a source distribution only: its build would run code.
        idx.add(*sdist_bytes("srconly", "1.0", "srconly", "FINDINGS['built'] = True\n"))
        yield idx


@pytest.fixture(scope="module", params=_modes())
def server(request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    srv = start_server(
        {"INTERNAL_API_TOKEN": TOKEN, "WARM_POOL_SIZE": "1", "DEPENDENCY_INSTALL_TIMEOUT_SECONDS": "60"},
        run_as=request.param,
    )
    yield srv
    stop_server(srv)
    shutil.rmtree(srv.workspace.parent, ignore_errors=True)


@pytest.fixture
def client(server: RunningServer) -> Iterator[httpx.Client]:
    with server.client(timeout=60) as c:
        yield c


def sync(
    client: httpx.Client, index: LocalIndex, deps: list[str], mode: str = "replace", **extra: Any
) -> httpx.Response:
    # Exactly what the control plane sends (docs/CONTRACT.md section 1), plus an unknown field.
    body = {
        "session_id": "sess_abc",
        "language_runtime": "python3.11",
        "python_package_index_url": index.url,
        "dependencies": deps,
        "sync_mode": mode,
        "future_field": True,
        **extra,
    }
    return client.post("/internal/session-config/sync", json=body)


def run(client: httpx.Client, code: str, event: dict[str, Any] | None = None) -> dict[str, Any]:
    body = {
        "execution_id": f"exec_{uuid.uuid4().hex[:16]}",
        "session_id": "sess_abc",
        "code": code,
        "language": "python",
        "timeout": 10,
        "event": event or {},
    }
    resp = client.post("/execute?wait=true", json=body)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


IMPORT_BETA = "import beta\ndef handler(event):\n    return beta.VALUE\n"


def test_sync_then_execute_through_the_daemon(client: httpx.Client, index: LocalIndex) -> None:
    # An execution first: the warm pool then holds a sandbox made before the sync, which
    # must be discarded when the set changes.
    assert run(client, "def handler(event):\n    return 1\n")["return_value"] == 1
    resp = sync(client, index, ["beta"])
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["status"] == "completed" and body["error"] == ""
    assert {d["name"]: d["version"] for d in body["installed_dependencies"]} == {
        "alpha": "1.0",
        "beta": "1.0",
    }
    assert set(body) >= {"installed_dependencies", "started_at", "completed_at"}
    result = run(client, IMPORT_BETA)
    assert result["status"] == "success", result["stderr"]
    assert result["return_value"] == 42
    # pip's environment had nothing of the daemon's: the token is nowhere in the tree.
    probe = run(
        client,
        (
            "import os\n"
            "def handler(event):\n"
            "    hits = []\n"
            "    for root, dirs, files in os.walk('/opt/sandbox-venv'):\n"
            "        for f in files:\n"
            "            with open(os.path.join(root, f), errors='replace') as fh:\n"
            "                if event['t'] in fh.read():\n"
            "                    hits.append(f)\n"
            "    return hits\n"
        ),
        {"t": TOKEN},
    )
    assert probe["status"] == "success" and probe["return_value"] == []
    # The same set again is a no-op that does not reach the index.
    seen = index.request_count()
    again = sync(client, index, ["beta"], "merge")
    assert again.status_code == 200
    assert again.json()["installed_dependencies"] == body["installed_dependencies"]
    assert index.request_count() == seen


@pytest.mark.parametrize(
    ("extra", "deps"),
    [
        ({}, ["beta", "--index-url=http://127.0.0.1:1/simple"]),
        ({}, ["-r /etc/passwd"]),
        ({}, ["beta @ http://127.0.0.1:1/beta.whl"]),
        ({"python_package_index_url": "file:///etc"}, ["beta"]),
        ({"sync_mode": "append"}, ["beta"]),
        ({"dependencies": "beta"}, []),
    ],
)
def test_invalid_syncs_are_400_with_the_error_body(
    client: httpx.Client, index: LocalIndex, extra: dict[str, Any], deps: list[str]
) -> None:
    resp = sync(client, index, deps, **extra)
    assert resp.status_code == 400, resp.text
    body = resp.json()
    assert set(body) == ERROR_KEYS
    assert body["error_code"] == "Executor.ValidationError"


def test_failed_install_is_422_and_the_previous_set_stays(client: httpx.Client, index: LocalIndex) -> None:
    assert sync(client, index, ["beta"]).status_code == 200
    resp = sync(client, index, ["no-such-project==1.0"], "merge")
    assert resp.status_code == 422, resp.text
    body = resp.json()
    assert set(body) == ERROR_KEYS
    assert "no-such-project" in body["error_detail"]
    assert run(client, IMPORT_BETA)["return_value"] == 42


def test_a_requirement_without_a_wheel_is_422_naming_it_and_the_setting(
    client: httpx.Client, index: LocalIndex
) -> None:
    assert sync(client, index, ["beta"]).status_code == 200
    resp = sync(client, index, ["srconly"], "merge")
    assert resp.status_code == 422, resp.text
    body = resp.json()
    assert set(body) == ERROR_KEYS
    assert body["error_code"] == "Executor.DependencyInstallFailed"
    assert "srconly" in body["description"] and "DEPENDENCY_ALLOW_SDIST" in body["description"]
    assert "srconly" in body["error_detail"] and "DEPENDENCY_ALLOW_SDIST" in body["solution"]
    # Wheels only (the default): the sdist was never even downloaded, so none of its code ran.
    assert not any(path.startswith("/files/srconly") for path in index.requests)
    assert run(client, IMPORT_BETA)["return_value"] == 42
