"""Start the real daemon (`sandbox-executor serve`) as a subprocess on a free loopback port.

Used by integration and security tests; every test talks to it over real HTTP.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support import levels

REPO = Path(__file__).resolve().parents[2]
SANDBOX_UID = 65534


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningServer:
    """A live daemon: its URL, process, directories and captured log."""

    url: str
    port: int
    process: subprocess.Popen[bytes]
    workspace: Path
    results_dir: Path
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    owns_base_dir: bool = False

    def client(self, timeout: float = 30.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)

    def log_lines(self) -> list[str]:
        return self.log_path.read_text(errors="replace").splitlines()

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout)


def _prepare_dir(path: Path, owner: tuple[int, int] | None) -> None:
    path.mkdir(parents=True, exist_ok=True)
    if owner is not None and os.geteuid() == 0:
        os.chown(path, *owner)


def start_server(
    env: Mapping[str, str] | None = None,
    *,
    base_dir: Path | None = None,
    port: int | None = None,
    run_as: tuple[int, int] | None = None,
    wait_ready: bool = True,
    ready_timeout: float = 20.0,
) -> RunningServer:
    """Start the daemon with ``env`` overrides; returns once /health answers (if wait_ready).

    ``run_as`` starts the daemon itself as that uid/gid (an unprivileged daemon); by default
    it runs as the current user (root here), and user code then runs as SANDBOX_UID.
    """
    base = base_dir or Path(tempfile.mkdtemp(prefix="sandbox-exec-test-"))
    base.chmod(0o755)
    port = port or free_port()
    workspace = base / "workspace"
    results = base / "results"
    sandbox_owner = run_as or (SANDBOX_UID, SANDBOX_UID)
    _prepare_dir(workspace, sandbox_owner)
    _prepare_dir(results, run_as)
    _prepare_dir(base / "venv", run_as)
    log_path = base / "daemon.log"
    full_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(base),
        "LANG": "C.UTF-8",
        "EXECUTOR_HOST": "127.0.0.1",
        "EXECUTOR_PORT": str(port),
        "WORKSPACE_PATH": str(workspace),
        "RESULTS_DIR": str(results),
        "SANDBOX_VENV_PATH": str(base / "venv" / "current"),
        "LOG_LEVEL": "INFO",
        "HEARTBEAT_INTERVAL": "5",
    }
    # SANDBOX_TEST_ISOLATION pins every test daemon's level (tests/support/levels.py).
    if levels.forced():
        full_env["SANDBOX_ISOLATION"] = levels.setting()
    # SANDBOX_TEST_WARM_POOL=0/N runs every test daemon cold / with a pool (tests/support/warm.py).
    if os.environ.get("SANDBOX_TEST_WARM_POOL", "").strip():
        full_env["WARM_POOL_SIZE"] = os.environ["SANDBOX_TEST_WARM_POOL"].strip()
    full_env.update(env or {})
    argv = [sys.executable, "-m", "sandbox_executor.cli", "serve"]
    if run_as is not None:
        setpriv = shutil.which("setpriv")
        assert setpriv, "setpriv (util-linux) is needed to start an unprivileged daemon"
        argv = [
            setpriv,
            f"--reuid={run_as[0]}",
            f"--regid={run_as[1]}",
            "--clear-groups",
            "--inh-caps=-all",
            *argv,
        ]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(argv, env=full_env, stdout=log, stderr=subprocess.STDOUT, cwd=base)
    server = RunningServer(
        url=f"http://127.0.0.1:{port}",
        port=port,
        process=process,
        workspace=workspace,
        results_dir=results,
        log_path=log_path,
        env=full_env,
        owns_base_dir=base_dir is None,
    )
    if wait_ready:
        deadline = time.monotonic() + ready_timeout
        while True:
            if process.poll() is not None:
                tail = log_path.read_text()[-3000:]
                stop_server(server)
                raise RuntimeError(f"daemon exited with {process.returncode}:\n{tail}")
            try:
                if httpx.get(f"{server.url}/health", timeout=1).status_code in (200, 503):
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                tail = log_path.read_text()[-3000:]
                stop_server(server)
                raise RuntimeError(f"daemon not ready after {ready_timeout}s:\n{tail}")
            time.sleep(0.05)
    return server


def stop_server(server: RunningServer, timeout: float = 5.0) -> int | None:
    """SIGTERM, then SIGKILL if it does not exit in time; returns the exit status."""
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
    if server.owns_base_dir:
        # rm, not shutil.rmtree: attacks leave trees deeper than Python's recursion limit;
        # --one-file-system and rm's own no-follow rules keep symlinks to / harmless.
        subprocess.run(["rm", "-rf", "--one-file-system", "--", str(server.log_path.parent)], check=False)
    return server.process.returncode


@contextmanager
def running_server(env: Mapping[str, str] | None = None, **kwargs: object) -> Iterator[RunningServer]:
    """Context manager form of :func:`start_server`."""
    server = start_server(env, **kwargs)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        stop_server(server)
