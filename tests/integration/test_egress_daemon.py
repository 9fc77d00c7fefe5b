"""The installer's egress through the real daemon (`sandbox-executor serve`): POST
/internal/session-config/sync with DEPENDENCY_ALLOW_SDIST=true and a hostile sdist whose
build step aims at a second loopback listener, the daemon's own port and a second index
host that is not on the list; then an execution imports what was installed. At the bwrap
level as root and as an unprivileged daemon, and at the landlock level (forced with
SANDBOX_ISOLATION=landlock) as an unprivileged daemon, as the control plane's Docker
containers run it. Every address involved is a loopback address."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.support.hostile_build import assert_nothing_got_out, hostile_build, require_level
from tests.support.listeners import RecordingListener
from tests.support.local_index import LocalIndex, sdist_bytes
from tests.support.server import start_server, stop_server

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap")

UNPRIVILEGED = (4242, 4242)


def _modes() -> list[Any]:
    modes: list[Any] = [pytest.param("bwrap", None, id="bwrap-root-daemon")]
    if os.geteuid() == 0 and shutil.which("setpriv"):
        modes.append(pytest.param("bwrap", UNPRIVILEGED, id="bwrap-unprivileged-daemon"))
        modes.append(pytest.param("landlock", UNPRIVILEGED, id="landlock-unprivileged-daemon"))
    return modes


def denied_total(metrics: str, reason: str) -> float:
    prefix = f'sandbox_dependency_egress_denied_total{{reason="{reason}"}} '
    return sum(float(line[len(prefix) :]) for line in metrics.splitlines() if line.startswith(prefix))


@pytest.mark.parametrize(("level", "run_as"), _modes())
def test_a_hostile_build_reaches_nothing_while_a_wheel_installs_and_imports(
    level: str, run_as: tuple[int, int] | None
) -> None:
    require_level(level)
    tag = "build-" + secrets.token_hex(6)
    with (
        LocalIndex() as index,
        LocalIndex(host="127.0.0.2") as second_index,
        RecordingListener() as listener,
    ):
        base = Path(tempfile.mkdtemp(prefix="egress-daemon-"))
        env = {"DEPENDENCY_ALLOW_SDIST": "true", "WARM_POOL_SIZE": "0", "SANDBOX_ISOLATION": level}
        server = start_server(env, base_dir=base, run_as=run_as)
        try:
            others = [
                ("127.0.0.1", listener.port),
                ("127.0.0.1", server.port),
                ("127.0.0.2", second_index.port),
            ]
            second_index.add_wheel("alpha", "9.9", {"alpha.py": "VALUE = 'wrong index'\n"})
            index.add_wheel("alpha", "1.0", {"alpha.py": "VALUE = 1\n"})
            index.add(*sdist_bytes("evil-pkg", "1.0", "evil_pkg", hostile_build(index.url, others, tag)))
            body = {
                "session_id": "sess_egress",
                "language_runtime": "python3.11",
                "python_package_index_url": index.url,
                "dependencies": ["alpha", "evil-pkg"],
                "sync_mode": "replace",
            }
            with server.client(timeout=120) as client:
                resp = client.post("/internal/session-config/sync", json=body)
                assert resp.status_code == 200, resp.text
                installed = {d["name"]: d["version"] for d in resp.json()["installed_dependencies"]}
                assert installed == {"alpha": "1.0", "evil-pkg": "1.0"}
                code = (
                    "import alpha, evil_pkg\ndef handler(e):\n    return [alpha.VALUE, evil_pkg.FINDINGS]\n"
                )
                run = client.post(
                    "/execute?wait=true",
                    json={
                        "execution_id": f"exec_{uuid.uuid4().hex[:16]}",
                        "code": code,
                        "language": "python",
                    },
                )
                assert run.status_code == 200 and run.json()["status"] == "success", run.text
                metrics = client.get("/metrics").text
        finally:
            stop_server(server)
            log = server.log_path.read_text(errors="replace")
            shutil.rmtree(base, ignore_errors=True)
        # The listeners saw nothing: no connection, no request to the second index.
        assert (listener.count(), second_index.request_count()) == (0, 0)
    alpha_value, findings = run.json()["return_value"]
    assert alpha_value == 1  # from the index, not from the second index
    assert_nothing_got_out(findings, unix_socket=level != "landlock")
    # The daemon's own port: no request of the build reached it (uvicorn logs every request).
    assert tag not in log
    # Denials are logged with host and port only, and counted in /metrics.
    denials = [line for line in log.splitlines() if '"egress_denied"' in line]
    assert denials and all("?" not in line for line in denials), denials[:3]
    assert f'"port": {listener.port}' in log or f'"port":{listener.port}' in log
    assert denied_total(metrics, "host_not_allowed") >= 1
