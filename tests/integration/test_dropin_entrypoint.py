"""The control plane's start command, ``python -m executor.interfaces.http.rest``, runs our daemon.

Started as the control plane does it (from the directory holding ``executor/``, with it on
PYTHONPATH and the docs/CONTRACT.md section 3 environment), against a fake control plane on
loopback: the daemon answers /health and /execute, announces itself, and on SIGTERM reports
``containers/exited`` with 143. The container-level version of this (root + gosu) is in
``make image-test``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.support.fake_control_plane import FakeControlPlane, free_port

ROOT = Path(__file__).resolve().parents[2]
SANDBOX_ID = 65534


def test_dropin_module_starts_the_daemon_and_reports_sigterm() -> None:
    base = Path(tempfile.mkdtemp(prefix="dropin-"))
    base.chmod(0o755)
    workspace = base / "workspace"
    workspace.mkdir()
    if os.geteuid() == 0:
        os.chown(workspace, SANDBOX_ID, SANDBOX_ID)
    port = free_port()
    with FakeControlPlane() as plane:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(base),
            "PYTHONPATH": str(ROOT),  # the control plane's PYTHONPATH includes /app
            "CONTROL_PLANE_URL": plane.url,
            "SESSION_ID": "sess-dropin",
            "WORKSPACE_PATH": str(workspace),
            "DISABLE_BWRAP": "false",
            "SANDBOX_VENV_PATH": str(base / "venv"),
            "RESULTS_DIR": str(base / "results"),
            "HOSTNAME": "dropin-container",
            "EXECUTOR_HOST": "127.0.0.1",
            "EXECUTOR_PORT": str(port),
            "WARM_POOL_SIZE": "0",
        }
        log = (base / "daemon.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "executor.interfaces.http.rest"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 20
            while True:
                assert proc.poll() is None, (base / "daemon.log").read_text()[-2000:]
                try:
                    if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "no /health within 20 s"
                time.sleep(0.05)
            ready = plane.wait_for("ready", timeout=5)[0].json
            assert ready["container_id"] == "dropin-container"
            answer = httpx.post(
                f"{url}/execute?wait=true",
                json={
                    "execution_id": "exec_dropin_1",
                    "session_id": "sess-dropin",
                    "code": "echo dropin-ok",
                    "language": "shell",
                    "timeout": 10,
                },
                timeout=30,
            )
            assert answer.status_code == 200, answer.text
            assert answer.json()["status"] == "success"
            assert answer.json()["stdout"] == "dropin-ok\n"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) in (143, -signal.SIGTERM)
            exited = plane.wait_for("exited", timeout=5)[0].json
            assert exited["exit_code"] == 143
            assert exited["container_id"] == "dropin-container"
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
