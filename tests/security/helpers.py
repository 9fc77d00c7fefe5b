"""The adversarial suite's client: a real daemon, attacks over HTTP, and the survival check.

Every attack goes through ``POST /execute?wait=true`` of a real ``sandbox-executor serve``
process. After each one, :meth:`Daemon.attack` asserts the two things every attack must
leave intact: ``/health`` answers 200 and an ordinary execution in the same language still
succeeds. The test itself asserts the third: the attack failed (or, at a level that cannot stop
it, exactly the weaker outcome docs/SECURITY.md documents for that level).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import levels
from tests.support.server import REPO, RunningServer, start_server, stop_server

LANGUAGES = ("python", "javascript", "shell")
# The isolation level the suite's sandboxes run at (SANDBOX_TEST_ISOLATION pins it): where a
# level cannot stop an attack, the test asserts the weaker outcome docs/SECURITY.md names.
LEVEL = levels.level()

# Secrets the daemon holds; no execution may ever see them.
EXECUTOR_TOKEN = "sec-executor-token-" + uuid.uuid4().hex
INTERNAL_TOKEN = "sec-internal-token-" + uuid.uuid4().hex
SECRETS = (EXECUTOR_TOKEN, INTERNAL_TOKEN)

# Small limits so that every resource attack ends within a few seconds.
SUITE_ENV: dict[str, str] = {
    "EXECUTOR_API_TOKEN": EXECUTOR_TOKEN,
    "INTERNAL_API_TOKEN": INTERNAL_TOKEN,
    "MEMORY_LIMIT_MB": "256",
    "PIDS_LIMIT": "128",
    "MAX_OUTPUT_BYTES": str(256 * 1024),
    "MAX_RETURN_VALUE_BYTES": str(1024 * 1024),
    "TMPFS_SIZE_MB": "16",
    "MAX_FILE_SIZE_MB": "32",
    "MAX_WORKSPACE_WRITE_MB": "48",
    "DEFAULT_TIMEOUT_SECONDS": "5",
    "ARTIFACT_MAX_FILES": "5000",
    "EXECUTIONS_RETENTION_COUNT": "50",
}

CANARIES: dict[str, tuple[str, Any]] = {
    "python": ("def handler(event):\n    return {'canary': event['n'] * 2}\n", {"canary": 42}),
    "javascript": ("exports.handler = async (event) => ({ canary: event.n * 2 });\n", {"canary": 42}),
    "shell": ('echo "canary $(( $(cat "$SANDBOX_EVENT_FILE" | tr -dc 0-9) * 2 ))"\n', None),
}


def daemon_user() -> tuple[int, int] | None:
    """The uid/gid named by SECURITY_DAEMON_USER (e.g. ``nobody``), or None for "as I am"."""
    name = os.environ.get("SECURITY_DAEMON_USER", "").strip()
    if not name:
        return None
    try:
        entry = pwd.getpwnam(name) if not name.isdigit() else pwd.getpwuid(int(name))
    except KeyError:
        pytest.skip(f"SECURITY_DAEMON_USER={name}: no such user")
    if os.geteuid() != 0:
        pytest.skip("SECURITY_DAEMON_USER needs the tests to run as root (setpriv switches to it)")
    if shutil.which("setpriv") is None:
        pytest.skip("SECURITY_DAEMON_USER needs setpriv (util-linux)")
    ids = (entry.pw_uid, entry.pw_gid)
    probe = subprocess.run(
        [
            "setpriv",
            f"--reuid={ids[0]}",
            f"--regid={ids[1]}",
            "--clear-groups",
            "--inh-caps=-all",
            sys.executable,
            "-c",
            "import sandbox_executor.cli",
        ],
        cwd="/",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": os.environ.get("PYTHONPATH", "")},
    )
    if probe.returncode != 0:
        pytest.skip(
            f"the daemon cannot run as {name} (uid {ids[0]}): {sys.executable} or {REPO} is not "
            f"readable/traversable by it ({probe.stderr.strip()[-300:]}). Make the checkout and "
            "its virtualenv world-readable (chmod o+rX on every parent directory)."
        )
    return ids


@dataclass
class Daemon:
    """A running daemon plus the calls the attacks need."""

    server: RunningServer
    run_as: tuple[int, int] | None
    client: httpx.Client = field(init=False)
    attacks: int = 0

    def __post_init__(self) -> None:
        self.client = httpx.Client(
            base_url=self.server.url,
            timeout=60,
            headers={"Authorization": f"Bearer {EXECUTOR_TOKEN}"},
        )

    @property
    def workspace(self) -> Path:
        return self.server.workspace

    @property
    def pid(self) -> int:
        return self.server.process.pid

    def close(self) -> None:
        self.client.close()
        self.clean_workspace()
        stop_server(self.server)
        shutil.rmtree(self.server.workspace.parent, ignore_errors=True)

    # ------------------------------------------------------------------ requests
    def post(self, body: dict[str, Any] | bytes, wait: bool = True) -> httpx.Response:
        url = "/execute?wait=true" if wait else "/execute"
        # ASCII JSON: lone surrogates (legal JSON escapes) travel as \\udXXX escapes.
        raw = body if isinstance(body, bytes) else json.dumps(body).encode("ascii")
        return self.client.post(url, content=raw, headers={"Content-Type": "application/json"})

    def execute(self, code: str, language: str = "python", **fields: Any) -> dict[str, Any]:
        """Run ``code``; returns the ExecutionResult JSON (asserting a strict-JSON 200)."""
        body = {"execution_id": new_id(), "code": code, "language": language, "timeout": 5, **fields}
        resp = self.post(body)
        assert resp.status_code == 200, resp.text[:2000]
        return strict_json(resp.content)

    def attack(self, code: str, language: str = "python", **fields: Any) -> dict[str, Any]:
        """Run an attack, then assert the daemon survived it; returns the attack's result."""
        self.attacks += 1
        result = self.execute(code, language, **fields)
        self.assert_survived(language)
        return result

    def assert_survived(self, language: str = "python") -> None:
        """/health is 200 and an ordinary execution in ``language`` succeeds."""
        health = self.client.get("/health")
        assert health.status_code == 200, health.text
        assert health.json()["status"] == "healthy"
        code, expected = CANARIES[language]
        result = self.execute(code, language, event={"n": 21}, timeout=10)
        assert result["status"] == "success", (result["stderr"][-2000:], result.get("error"))
        if expected is not None:
            assert result["return_value"] == expected
        else:
            assert result["stdout"] == "canary 42\n"

    def clean_workspace(self) -> None:
        """Empty the workspace from the host side (symlinks are removed, never followed).

        rm, not shutil.rmtree: Python 3.11's rmtree recurses and fails on the deep trees
        the attacks leave behind.
        """
        # Never chmod/chown -R here: the entries include links to "/" that such tools follow
        # when named on the command line. rm removes a named link, never its target.
        entries = [str(p) for p in self.workspace.iterdir()]
        if entries:
            subprocess.run(["rm", "-rf", "--one-file-system", "--", *entries], check=False)


def new_id(prefix: str = "sec") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:16]}"


def _no_constants(token: str) -> Any:
    raise AssertionError(f"the response contains {token}, which is not JSON")


def strict_json(raw: bytes) -> Any:
    """Parse JSON that must not contain NaN/Infinity (the control plane rejects them)."""
    return json.loads(raw, parse_constant=_no_constants)


def start_daemon(extra_env: dict[str, str] | None = None, *, fast_disk: bool = False) -> Daemon:
    """Start the suite's daemon (as SECURITY_DAEMON_USER when set).

    ``fast_disk`` puts its directories (so the workspace) on the /dev/shm tmpfs when there
    is one: attacks that create 100k files would take minutes on a slow disk.
    """
    run_as = daemon_user()
    env = {**SUITE_ENV, **(extra_env or {})}
    base = None
    if fast_disk and os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        base = Path(tempfile.mkdtemp(prefix="sandbox-exec-sec-", dir="/dev/shm"))
    server = start_server(env, run_as=run_as, base_dir=base)
    return Daemon(server, run_as)


def leaks(result: dict[str, Any], *needles: str) -> list[str]:
    """Which of ``needles`` (default: the daemon's secrets) appear anywhere in ``result``."""
    text = json.dumps(result)
    return [n for n in (needles or SECRETS) if n in text]
