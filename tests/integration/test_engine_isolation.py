"""Isolation through the real engine: environment, network, host files, user ids."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import textwrap
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import sandbox_executor
from sandbox_executor.models import ExecutionResult, Status

RunCode = Callable[..., Awaitable[ExecutionResult]]
SANDBOX_UID = 65534
IS_ROOT = os.geteuid() == 0


def _code(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


async def test_daemon_secrets_are_not_visible_inside(
    run_code: RunCode, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "tok-" + os.urandom(8).hex()
    monkeypatch.setenv("INTERNAL_API_TOKEN", secret)
    monkeypatch.setenv("EXECUTOR_API_TOKEN", secret + "-api")
    monkeypatch.setenv("CONTROL_PLANE_URL", "http://control-plane.invalid")
    code = _code(
        """
        import os
        def handler(event):
            blobs = []
            for pid in os.listdir("/proc"):
                if pid.isdigit():
                    try:
                        blobs.append(open(f"/proc/{pid}/environ", "rb").read().decode("latin-1"))
                        blobs.append(open(f"/proc/{pid}/cmdline", "rb").read().decode("latin-1"))
                    except OSError:
                        pass
            return {"env": dict(os.environ), "proc": blobs}
        """
    )
    result = await run_code(code, env_vars={"SESSION_VAR": "mine"})
    assert result.status == Status.SUCCESS, result.stderr
    env = result.return_value["env"]
    assert "INTERNAL_API_TOKEN" not in env and "CONTROL_PLANE_URL" not in env
    assert env["SESSION_VAR"] == "mine"
    assert env["HOME"] == "/workspace" and env["TMPDIR"] == "/tmp"
    assert env["PATH"] and env["LANG"]
    assert secret not in json.dumps(result.model_dump(mode="json"))
    shell = await run_code("env; cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n'\n", "shell")
    assert secret not in shell.stdout and "INTERNAL_API_TOKEN" not in shell.stdout


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A TCP server on 127.0.0.1 in the daemon's network namespace."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)
    yield sock
    sock.close()


async def test_no_network(run_code: RunCode, listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    code = _code(
        """
        import socket
        def handler(event):
            out = {}
            for host in ("127.0.0.1", "10.0.2.2", "1.1.1.1"):
                s = socket.socket()
                s.settimeout(1)
                try:
                    s.connect((host, event["port"]))
                    out[host] = "connected"
                except OSError as exc:
                    out[host] = type(exc).__name__
                finally:
                    s.close()
            out["ifaces"] = sorted(name for _, name in socket.if_nameindex())
            return out
        """
    )
    result = await run_code(code, event={"port": port})
    assert result.status == Status.SUCCESS, result.stderr
    out = result.return_value
    assert out["127.0.0.1"] == "ConnectionRefusedError"  # its own empty loopback, not ours
    assert out["10.0.2.2"] != "connected" and out["1.1.1.1"] != "connected"
    assert out["ifaces"] == ["lo"]
    with pytest.raises(BlockingIOError):
        listener.accept()  # nothing ever reached the daemon's side
    shell = await run_code(f"exec 3<>/dev/tcp/127.0.0.1/{port} && echo connected || echo refused\n", "shell")
    assert shell.stdout.strip() == "refused"


async def test_host_files_are_invisible(run_code: RunCode) -> None:
    code = _code(
        """
        import os
        def handler(event):
            def exists(p):
                return os.path.lexists(p)
            return {
                "passwd": open("/etc/passwd").read(),
                "etc": sorted(os.listdir("/etc")),
                "gone": {p: exists(p) for p in event["paths"]},
                "procs": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
                "root_ro": os.access("/", os.W_OK),
                "cwd": os.getcwd(),
            }
        """
    )
    executor_paths = [str(Path(sandbox_executor.__file__).parent), sys.prefix, "/var/lib/sandbox-executor"]
    paths = ["/etc/shadow", "/root", "/home", "/etc/hostname", "/work", *executor_paths]
    result = await run_code(code, event={"paths": paths})
    assert result.status == Status.SUCCESS, result.stderr
    out = result.return_value
    host_passwd = Path("/etc/passwd").read_text()
    assert out["passwd"] != host_passwd
    inside_users = {line.split(":")[0] for line in out["passwd"].splitlines()}
    host_users = {line.split(":")[0] for line in host_passwd.splitlines()}
    assert inside_users <= {"root", "sandbox", "nobody"}
    assert host_users - inside_users  # the host has accounts the sandbox cannot see
    assert out["gone"] == {p: False for p in paths}
    assert "shadow" not in out["etc"] and "hostname" not in out["etc"]
    assert out["procs"] == [1]  # its own PID namespace: only itself
    assert out["cwd"] == "/workspace"


async def test_only_workspace_and_tmp_are_writable(run_code: RunCode, workspace: Path) -> None:
    code = _code(
        """
        import os
        def handler(event):
            out = {}
            for d in ("/", "/usr", "/etc", "/workspace", "/tmp", "/var", "/opt"):
                try:
                    with open(os.path.join(d, "probe.txt"), "w") as f:
                        f.write("x")
                    out[d] = "written"
                except OSError as exc:
                    out[d] = exc.errno
            return out
        """
    )
    result = await run_code(code)
    out = result.return_value
    assert out["/workspace"] == "written" and out["/tmp"] == "written"
    assert all(v != "written" for d, v in out.items() if d not in ("/workspace", "/tmp")), out
    assert (workspace / "probe.txt").read_text() == "x"
    assert not Path("/tmp/probe.txt").exists() or Path("/tmp/probe.txt").stat().st_uid != SANDBOX_UID


@pytest.mark.skipif(not IS_ROOT, reason="the uid drop happens when the daemon is root")
async def test_root_daemon_runs_user_code_as_the_sandbox_uid(
    run_code: RunCode, host: Any, marker: str
) -> None:
    code = _code(
        f"""
        import os, subprocess, sys, time
        def handler(event):
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)", {marker!r}])
            time.sleep(1.0)
            child.kill()
            return {{"uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(),
                    "groups": os.getgroups()}}
        """
    )
    task = asyncio.ensure_future(run_code(code))
    seen: list[tuple[list[int], list[int]]] = []
    for _ in range(100):
        await asyncio.sleep(0.02)
        pids = host.processes_with(marker=marker)
        if pids:
            # The marked child, its parent (the sandbox's init, the interpreter) and its
            # parent (bwrap): none holds uid 0 on the host, in any of its four uids.
            pid = pids[0]
            for _ in range(3):
                uids, gids, ppid = host.proc_ids(pid)
                seen.append((uids, gids))
                pid = ppid
            break
    result = await task
    assert result.status == Status.SUCCESS, result.stderr
    assert seen, "the marked sandbox process was never seen from the host"
    for uids, gids in seen:
        assert uids == [SANDBOX_UID] * 4, seen
        assert gids == [SANDBOX_UID] * 4, seen
    inside = result.return_value
    assert inside["uid"] != 0 and inside["euid"] != 0
    assert inside["uid"] == SANDBOX_UID and inside["gid"] == SANDBOX_UID
    assert 0 not in inside["groups"]


def _unprivileged_python() -> list[str] | None:
    """A command that runs this package's CLI as uid 65534, or None when impossible here."""
    if not IS_ROOT or shutil.which("setpriv") is None:
        return None
    python = "/usr/bin/python3"
    probe = subprocess.run(
        ["setpriv", "--reuid", str(SANDBOX_UID), "--regid", str(SANDBOX_UID), "--clear-groups",
         python, "-c", "import sys; print(sys.version_info[:2])"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if probe.returncode != 0 or probe.stdout.strip() != str(sys.version_info[:2]):
        return None
    src = str(Path(sandbox_executor.__file__).resolve().parents[1])
    site = sysconfig.get_paths()["purelib"]
    boot = (
        f"import sys; sys.path[:0] = [{src!r}, {site!r}]; "
        "from sandbox_executor.cli import main; sys.exit(main())"
    )
    return [
        "setpriv", "--reuid", str(SANDBOX_UID), "--regid", str(SANDBOX_UID), "--clear-groups",
        "env", "-i", "PATH=/usr/bin:/bin", "INTERNAL_API_TOKEN=unpriv-secret",
        python, "-I", "-c", boot,
    ]  # fmt: skip


def test_unprivileged_daemon_runs_sandboxes(workspace: Path, tmp_path: Path, marker: str) -> None:
    command = _unprivileged_python()
    if command is None:
        pytest.skip("needs root (to switch to uid 65534), setpriv and /usr/bin/python3 matching this venv")
    script = workspace / "code.py"
    script.write_text(
        "import os\n"
        "def handler(event):\n"
        "    open('out.txt', 'w').write('x')\n"
        "    return {'uid': os.getuid(), 'token': os.environ.get('INTERNAL_API_TOKEN'), 'e': event}\n"
    )
    script.chmod(0o644)
    proc = subprocess.run(
        [*command, "run", "-l", "python", str(script), "--workspace", str(workspace), "--event", '{"k": 1}'],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout
    result = json.loads(proc.stdout)
    assert result["status"] == "success"
    assert result["return_value"] == {"uid": SANDBOX_UID, "token": None, "e": {"k": 1}}
    assert result["artifacts"] == ["out.txt"]
    assert (workspace / "out.txt").stat().st_uid == SANDBOX_UID

    # The timeout kill path works without privileges too, leaving nothing behind.
    slow = workspace / "slow.sh"
    slow.write_text(
        f"(exec -a {marker} sleep 300) &\nsetsid bash -c 'exec -a {marker} sleep 300' &\nsleep 300\n"
    )
    slow.chmod(0o644)
    proc = subprocess.run(
        [*command, "run", "-l", "shell", str(slow), "--workspace", str(workspace), "--timeout", "1"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    result = json.loads(proc.stdout)
    assert result["status"] == "timeout" and result["exit_code"] == -1
    assert result["stderr"].endswith("Execution timeout after 1 seconds")
    leftovers = [
        p for p in os.listdir("/proc")
        if p.isdigit() and marker.encode() in _read(f"/proc/{p}/cmdline")
    ]  # fmt: skip
    assert leftovers == []


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError:
        return b""


async def test_dev_is_minimal(run_code: RunCode) -> None:
    result = await run_code("import os\ndef handler(event):\n    return sorted(os.listdir('/dev'))\n")
    devices = set(result.return_value)
    assert {"null", "zero", "urandom", "random"} <= devices
    assert not devices & {"sda", "vda", "mem", "kmem", "kmsg", "port", "mapper", "loop0", "tty0"}
    assert len(devices) < 20, devices
