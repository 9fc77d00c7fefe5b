"""podman, and the few questions the test asks it about a container."""

from __future__ import annotations

import socket
import subprocess
import time


def podman(*args: str, check: bool = False, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run podman; stderr noise about systemd health timers is expected on this host."""
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, check=check)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def state(container: str) -> str:
    """running, exited, ... or "" when the container is gone."""
    return podman("inspect", "--format", "{{.State.Status}}", container).stdout.strip()


def running(container: str) -> bool:
    return state(container) == "running"


def host_pid(container: str) -> int | None:
    """The host pid of the container's PID 1."""
    out = podman("inspect", "--format", "{{.State.Pid}}", container).stdout.strip()
    return int(out) if out.isdigit() and out != "0" else None


def exit_code(container: str) -> str:
    return podman("inspect", "--format", "{{.State.ExitCode}}", container).stdout.strip()


def hostname(container: str) -> str:
    return podman("inspect", "--format", "{{.Config.Hostname}}", container).stdout.strip()


def run_detached(name: str, args: list[str]) -> float:
    """``podman run -d``; the monotonic time it was started. Raises on failure."""
    podman("rm", "-f", "--ignore", name)
    started = time.monotonic()
    out = podman("run", "-d", "--name", name, "--hostname", name, *args)
    if out.returncode != 0:
        raise RuntimeError(f"podman run failed: {out.stderr.strip()[-800:]}")
    return started


def remove(name: str) -> None:
    podman("rm", "-f", "-t", "2", "--ignore", name, timeout=60)


def logs(name: str, lines: int = 40) -> str:
    out = podman("logs", "--tail", str(lines), name)
    return out.stdout + out.stderr
