"""The attacks of docs/CONTRACT.md section 4's settings, each judged from the host.

Every attack runs as ordinary user code through ``POST /execute``. The verdict never
trusts the sandbox's own report alone: secrets are searched in everything the run
returned, writes are looked for on the container's disk, the daemon's processes are
checked by pid and start time, leftovers are searched in the host's whole /proc.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

from . import hostproc, podman, programs
from .client import Daemon
from .plane import FakeControlPlane
from .report import Report

# Pids the programs try beyond those they can list (no /proc at some levels).
MAX_PID = 4096
OUTSIDE_WORKSPACE = (
    "/app",
    "/opt",
    "/opt/sandbox-venv",
    "/srv/executor",
    "/srv/executor/venv/lib",
    "/var/lib/sandbox-executor/results",
    "/var/lib/sandbox-executor/results/outbox",
    "/var/lib/sandbox-executor/state",
    "/home/sandbox",
    "/tmp",
)
WORKSPACE = "/workspace"


@dataclass(frozen=True)
class Target:
    """One running container under attack."""

    where: str  # the setting's name, for the report
    daemon: Daemon
    plane: FakeControlPlane
    pid1: int  # host pid of the container's PID 1
    core: tuple[hostproc.Proc, ...]  # tini, the daemon, the spawner, as found at start
    port: int
    secrets: tuple[str, ...]  # the token values that must never come out
    report: Report
    # Negative control (level none): every attack must be seen to succeed, proving that
    # each verdict can fail.
    control: bool = False

    def run(self, kind: str, language: str, code: str, timeout: int, **extra: Any) -> tuple[int, Any, float]:
        body = {
            "execution_id": f"exec_{self.where}_{kind}_{secrets.token_hex(3)}",
            "code": code,
            "language": language,
            "timeout": timeout,
            **extra,
        }
        status, result, took = self.daemon.execute(body, timeout=timeout + 40)
        return status, result if isinstance(result, dict) else {"answer": result}, took

    def check(self, name: str, ok: bool, detail: str, column: str) -> bool:
        return self.report.check(self.where, name, ok, detail, column)

    def verdict(self, name: str, stopped: bool, succeeded: bool, detail: str, column: str) -> None:
        """``succeeded``: positive evidence that the attack worked (never just "no answer")."""
        if self.control:
            self.check(f"negative control, the attack must be seen: {name}", succeeded, detail, column)
        else:
            self.check(name, stopped and not succeeded, detail, column)


def marker(kind: str) -> str:
    return f"imgtest-{kind}-{secrets.token_hex(4)}"


def token_read(t: Target) -> None:
    status, result, _ = t.run("token", "python", programs.ENVIRON_READ, 30, event={"max_pid": MAX_PID})
    text = json.dumps(result)
    leaked = [s for s in t.secrets if s in text]
    rv = result.get("return_value") or {}
    ran = status == 200 and result.get("status") == "success"
    t.verdict(
        "user code cannot read INTERNAL_API_TOKEN / EXECUTOR_API_TOKEN (every /proc/<pid>/environ)",
        ran and not rv.get("found"),
        bool(leaked),
        f"found {rv.get('found')}, readable files {rv.get('readable')}, refused {rv.get('refused')}"
        if ran
        else f"HTTP {status} {text[:400]}",
        "token",
    )


def port_connect(t: Target) -> None:
    probe = f"/sandbox-probe-{marker('port')}"
    event = {"ports": {"daemon": t.port, "control plane": t.plane.port}, "probe": probe}
    status, result, _ = t.run("port", "python", programs.PORT_CONNECT, 60, event=event)
    rv = result.get("return_value") or {}
    connected = [k for k, v in rv.items() if str(v).startswith("CONNECTED")]
    reached = t.plane.seen(probe)
    ran = status == 200 and result.get("status") == "success" and bool(rv)
    t.verdict(
        "user code cannot connect to the daemon's port (nor the control plane's)",
        ran,
        bool(connected or reached),
        json.dumps(rv)[:500] if ran else f"HTTP {status} {json.dumps(result)[:400]}",
        "port",
    )


def writes(t: Target) -> None:
    mark = marker("write")
    dirs = [WORKSPACE, *OUTSIDE_WORKSPACE]
    status, result, _ = t.run("writes", "python", programs.WRITES, 30, event={"dirs": dirs, "marker": mark})
    rv = result.get("return_value") or {}
    on_disk = {d: hostproc.container_path(t.pid1, f"{d}/{mark}").exists() for d in dirs}
    escaped = [d for d in OUTSIDE_WORKSPACE if on_disk[d]]
    t.check(
        "the write check sees a workspace write on the container's disk",
        on_disk[WORKSPACE],
        "" if on_disk[WORKSPACE] else f"HTTP {status} {json.dumps(result)[:400]}",
        "writes",
    )
    t.verdict(
        "user code cannot write outside the workspace (" + ", ".join(OUTSIDE_WORKSPACE) + ")",
        status == 200,
        bool(escaped),
        f"on the container's disk: {escaped}" if escaped else f"sandbox saw {json.dumps(rv)[:400]}",
        "writes",
    )


def kill_daemon(t: Target) -> None:
    status, result, _ = t.run("kill", "python", programs.KILL_ALL, 30, event={"max_pid": MAX_PID})
    rv = result.get("return_value") or {}
    healthy = t.daemon.healthy(timeout=5)
    # A SIGKILLed daemon closes its sockets a moment before it is a zombie: when /health is
    # down, give the kernel that moment before looking for the dead.
    deadline = time.monotonic() + (0 if healthy else 3)
    while True:
        dead = [f"{p.pid} {p.cmdline[:40]}" for p in t.core if not hostproc.alive(p)]
        if dead or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    t.verdict(
        "user code cannot kill the daemon (SIGKILL to every pid, kill(-1))",
        len(t.core) >= 3 and healthy and podman.running(t.daemon.container),
        bool(dead),
        f"killed {dead}, /health {'200' if healthy else 'down'}; sandbox: delivered to "
        f"{rv.get('delivered')}, refused {rv.get('refused')}, kill(-1) {rv.get('kill(-1)')}"
        if status == 200
        else f"HTTP {status}, killed {dead}, /health {'200' if healthy else 'down'}",
        "kill",
    )
    if not t.control:
        after(t, "kill", "kill")


def outlive_timeout(t: Target, language: str, code: str) -> None:
    mark = marker(f"setsid-{language}")
    orphan_file = f"orphan-{mark}.txt"
    # The marker also rides in the environment: every process the run execs carries it.
    extra: dict[str, Any] = {"env_vars": {"MARKER": mark, "ORPHAN_FILE": orphan_file}}
    if language == "python":
        extra["event"] = {"marker": mark, "file": orphan_file}
    status, result, took = t.run(f"setsid_{language}", language, code, 2, **extra)
    left = [f"{p.pid} {p.cmdline[:60]}" for p in hostproc.with_marker(mark)]
    beat = hostproc.container_path(t.pid1, f"{WORKSPACE}/{orphan_file}")
    size = beat.stat().st_size if beat.exists() else 0
    time.sleep(0.6)
    grew = beat.exists() and beat.stat().st_size > size
    if left:
        time.sleep(2)
        left.append(f"after 2 s more: {len(hostproc.with_marker(mark))} left")
    t.verdict(
        f"a setsid'd double-forked child ({language}) does not outlive its run's timeout",
        status == 200 and result.get("status") == "timeout" and size > 0,
        bool(left) or grew,
        f"status {result.get('status')} in {took:.1f} s, orphan wrote {size} B"
        + (f", still writing after the result: {grew}" if grew else "")
        + (f", still running: {left}" if left else ""),
        "setsid",
    )


def fork_bomb(t: Target) -> None:
    mark = marker("bomb")
    peak = [0]
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.25):
            peak[0] = max(peak[0], len(hostproc.with_marker(mark)))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    status, result, took = t.run("bomb", "shell", programs.FORK_BOMB, 4, env_vars={"MARKER": mark})
    left = hostproc.with_marker(mark)
    done.set()
    watcher.join()
    healthy = t.daemon.healthy(timeout=10)
    t.check(
        "a fork bomb ends with its run, the daemon stays healthy",
        status == 200 and result.get("status") in ("timeout", "failed") and not left and healthy,
        f"status {result.get('status')} ({result.get('termination_reason')}) in {took:.1f} s, "
        f"peak {peak[0]} processes, {len(left)} left after the result, "
        f"/health {'200' if healthy else 'down'}",
        "forkbomb",
    )
    after(t, "fork bomb", "forkbomb")


def after(t: Target, what: str, column: str) -> None:
    status, result, took = t.run("after", "python", programs.AFTER, 20)
    t.check(
        f"the next run after the {what} succeeds",
        status == 200 and result.get("return_value") == "still serving",
        f"in {took:.2f} s" if status == 200 else f"HTTP {status} {json.dumps(result)[:300]}",
        column,
    )


def run_all(t: Target) -> None:
    """Killing the daemon comes last: where it succeeds, nothing after it could run."""
    token_read(t)
    port_connect(t)
    writes(t)
    # Not in the negative control: without a sandbox too, the spawner (a subreaper) kills
    # what a run leaves behind, and the fork bomb's process group ends with its run.
    if not t.control:
        outlive_timeout(t, "python", programs.SETSID_PYTHON)
        outlive_timeout(t, "shell", programs.SETSID_SHELL)
        fork_bomb(t)
    kill_daemon(t)
