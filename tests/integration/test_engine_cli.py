"""The operator commands: `sandbox-executor run` and `sandbox-executor check`."""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

IS_ROOT = os.geteuid() == 0
CLI = [sys.executable, "-m", "sandbox_executor.cli"]


def _cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("WORKSPACE_PATH", "BWRAP_PATH")}
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**base, **(env or {})},
    )


def test_run_success_exits_0(tmp_path: Path) -> None:
    code = tmp_path / "h.py"
    code.write_text(
        "import sys\ndef handler(event):\n    print('out')\n    return [event, sys.stdin.read()]\n"
    )
    proc = _cli("run", "--language", "python", str(code), "--event", '{"a": 1}', "--stdin", "in")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["status"] == "success"
    assert result["return_value"] == [{"a": 1}, "in"]
    assert result["stdout"] == "out\n"
    assert set(result) >= {
        "status", "exit_code", "stdout", "stderr", "execution_time", "return_value", "metrics",
        "artifacts", "termination_reason", "stdout_truncated", "stderr_truncated", "artifact_details",
    }  # fmt: skip


def test_run_failure_exits_1(tmp_path: Path) -> None:
    code = tmp_path / "fail.js"
    code.write_text("throw new Error('boom');\n")
    proc = _cli("run", "-l", "javascript", str(code))
    assert proc.returncode == 1
    result = json.loads(proc.stdout)
    assert result["status"] == "failed" and "Error: boom" in result["stderr"]


def test_run_timeout_exits_1(tmp_path: Path) -> None:
    code = tmp_path / "slow.sh"
    code.write_text("echo started\nsleep 30\n")
    proc = _cli("run", "-l", "shell", str(code), "--timeout", "1")
    assert proc.returncode == 1
    result = json.loads(proc.stdout)
    assert result["status"] == "timeout" and result["stdout"] == "started\n"
    assert result["stderr"].endswith("Execution timeout after 1 seconds")


def test_run_from_stdin_with_a_workspace(workspace: Path) -> None:
    proc = subprocess.run(
        [*CLI, "run", "-l", "shell", "-", "--workspace", str(workspace), "--env", "NAME=value"],
        input='echo "$NAME" > result.txt\n', capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["artifacts"] == ["result.txt"]
    assert (workspace / "result.txt").read_text() == "value\n"


def test_run_rejects_bad_input(tmp_path: Path) -> None:
    code = tmp_path / "h.py"
    code.write_text("def handler(e): pass\n")
    assert _cli("run", "-l", "python", str(code), "--timeout", "0").returncode == 2
    assert _cli("run", "-l", "python", str(code), "--event", "[1]").returncode == 2
    assert _cli("run", "-l", "python", str(tmp_path / "missing.py")).returncode == 2
    assert _cli("run", "-l", "cobol", str(code)).returncode == 2


EVENT_HANDLER = (
    "import hashlib, json\n"
    "def handler(event):\n"
    "    blob = json.dumps(event, sort_keys=True, ensure_ascii=False).encode()\n"
    "    return [len(blob), hashlib.sha256(blob).hexdigest(), event['n']]\n"
)


def _big_event() -> tuple[dict[str, object], list[object]]:
    # ~900 KB: far over the kernel's 128 KiB cap on one argument, under the API's limits.
    event: dict[str, object] = {"n": 7, "rows": [{"i": i, "text": "é" * 40 + str(i)} for i in range(8_000)]}
    blob = json.dumps(event, sort_keys=True, ensure_ascii=False).encode()
    assert 850_000 < len(blob) < 1_000_000, len(blob)
    return event, [len(blob), hashlib.sha256(blob).hexdigest(), 7]


def test_run_event_from_a_900_kb_file(tmp_path: Path) -> None:
    code = tmp_path / "h.py"
    code.write_text(EVENT_HANDLER)
    event, expected = _big_event()
    path = tmp_path / "event.json"
    path.write_text(json.dumps(event, ensure_ascii=False), encoding="utf-8")
    proc = _cli("run", "-l", "python", str(code), "--event", f"@{path}")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["return_value"] == expected


def test_run_event_from_standard_input(tmp_path: Path) -> None:
    code = tmp_path / "h.py"
    code.write_text(EVENT_HANDLER)
    event, expected = _big_event()
    for spec in ("-", "@-"):
        proc = subprocess.run(
            [*CLI, "run", "-l", "python", str(code), "--event", spec],
            input=json.dumps(event, ensure_ascii=False).encode(),
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["return_value"] == expected


def test_run_event_from_standard_input_needs_the_code_in_a_file() -> None:
    proc = subprocess.run(
        [*CLI, "run", "-l", "python", "-", "--event", "-"],
        input="def handler(event):\n    return 1\n", capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "standard input" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read the event file"),
        (b"{not json", "not valid JSON"),
        (b'{"a": "\xff"}', "not valid JSON"),
        (b"[1, 2]", "event: Input should be a valid dictionary"),
        (b'{"a": ' * 200 + b"1" + b"}" * 200, "nested deeper than 128 levels"),
        (b'{"a": ' * 100_000 + b"1" + b"}" * 100_000, "nested too deeply"),
        (b'{"a": "' + b"x" * (16 * 1024 * 1024) + b'"}', "exceeds 16777216 bytes"),
    ],
    ids=["missing", "invalid", "not-utf8", "not-an-object", "too-deep", "deeper-than-the-parser", "too-big"],
)
def test_run_event_file_errors_are_clear_and_exit_2(
    tmp_path: Path, content: bytes | None, message: str
) -> None:
    code = tmp_path / "h.py"
    code.write_text("def handler(event):\n    return 1\n")
    path = tmp_path / "event.json"
    if content is not None:
        path.write_bytes(content)
    proc = _cli("run", "-l", "python", str(code), "--event", f"@{path}")
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert len(proc.stderr) < 2000  # no megabyte of event echoed back


def test_run_reports_a_sandbox_that_cannot_start_as_crashed(tmp_path: Path) -> None:
    code = tmp_path / "h.sh"
    code.write_text("echo hi\n")
    proc = _cli("run", "-l", "shell", str(code), "--workspace", str(tmp_path / "does-not-exist"))
    assert proc.returncode == 1
    result = json.loads(proc.stdout)
    assert result["status"] == "crashed" and result["termination_reason"] == "sandbox_error"
    assert "does-not-exist" in result["stderr"]


def test_check_passes_on_a_good_host(workspace: Path) -> None:
    proc = _cli("check", env={"WORKSPACE_PATH": str(workspace)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.startswith("[ok  ] isolation: ") for line in lines), proc.stdout
    assert any(line.startswith("[ok  ] sandbox:") and "ran a test sandbox" in line for line in lines)
    assert any(line.startswith("[ok  ] memory_bounds: ") for line in lines), proc.stdout
    assert any(line.startswith("[ok  ] workspace_writes: 1024 MiB per run") for line in lines), proc.stdout
    # Every check passed; the indented lines are what the level gives up and its remedy.
    assert all(line.startswith(("[ok  ]", "       ")) for line in lines), proc.stdout


def test_check_names_the_memory_mechanism(workspace: Path) -> None:
    proc = _cli("check", env={"WORKSPACE_PATH": str(workspace), "RUN_BOUNDS_MECHANISM": "watchdog"})
    assert "[ok  ] memory_bounds: watchdog (memory watchdog:" in proc.stdout, proc.stdout


def test_check_missing_bwrap(workspace: Path) -> None:
    env = {"WORKSPACE_PATH": str(workspace), "BWRAP_PATH": "/nonexistent/bwrap"}
    pinned = _cli("check", env={**env, "SANDBOX_ISOLATION": "bwrap"})
    assert pinned.returncode == 1
    assert "[FAIL] isolation: SANDBOX_ISOLATION=bwrap is not available here" in pinned.stdout, pinned.stdout
    assert "apt-get install -y bubblewrap" in pinned.stdout
    # auto: the strongest level without bwrap, saying what it lacks and how to get more.
    auto = _cli("check", env={**env, "SANDBOX_ISOLATION": "auto"})
    assert auto.returncode == 0, auto.stdout + auto.stderr
    assert "[ok  ] isolation: landlock" in auto.stdout
    assert "missing for the next level up: user namespaces: bwrap not found" in auto.stdout
    assert "remedy: install it: apt-get install -y bubblewrap" in auto.stdout


def test_check_missing_workspace(tmp_path: Path) -> None:
    proc = _cli("check", env={"WORKSPACE_PATH": str(tmp_path / "nope")})
    assert proc.returncode == 1
    assert "[FAIL] workspace" in proc.stdout and f"mkdir -p {tmp_path / 'nope'}" in proc.stdout


@pytest.mark.skipif(not IS_ROOT, reason="a root-owned directory is only unwritable for someone else")
def test_check_workspace_not_writable_by_the_sandbox_user(tmp_path: Path) -> None:
    ws = Path(os.environ.get("TMPDIR", "/tmp")) / f"root-ws-{os.getpid()}"
    ws.mkdir(mode=0o755, exist_ok=True)
    try:
        proc = _cli("check", env={"WORKSPACE_PATH": str(ws)})
        assert proc.returncode == 1
        assert "[FAIL] workspace" in proc.stdout and f"chown 65534:65534 {ws}" in proc.stdout
    finally:
        ws.rmdir()


def test_check_missing_interpreter(workspace: Path) -> None:
    proc = _cli("check", env={"WORKSPACE_PATH": str(workspace), "NODE_BINARY": "/nonexistent/node"})
    assert proc.returncode == 1
    assert "[FAIL] node" in proc.stdout and "apt-get install -y nodejs" in proc.stdout


@pytest.mark.skipif(not IS_ROOT, reason="needs root to map a whole uid range into a user namespace")
def test_check_explains_refused_user_namespaces(workspace: Path) -> None:
    """In a user namespace whose user.max_user_namespaces is 0 (what a hardened host or a
    container runtime does), bwrap cannot create its namespaces: the check says how to fix it."""
    read_fd, write_fd = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: a new user namespace, then the check inside it
        try:
            os.close(read_fd)
            os.close(go_w)
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.unshare(0x10000000) != 0:  # CLONE_NEWUSER
                os._exit(90)
            os.write(write_fd, b"1")
            os.read(go_r, 1)  # the parent wrote our uid/gid maps
            Path("/proc/sys/user/max_user_namespaces").write_text("0")
            out = os.open(str(workspace / "check.out"), os.O_WRONLY | os.O_CREAT, 0o644)
            os.dup2(out, 1)
            os.dup2(out, 2)
            env = {**os.environ, "WORKSPACE_PATH": str(workspace), "SANDBOX_ISOLATION": "bwrap"}
            os.execve(sys.executable, [*CLI, "check"], env)
        finally:
            os._exit(91)
    os.close(write_fd)
    os.close(go_r)
    assert os.read(read_fd, 1) == b"1"
    Path(f"/proc/{pid}/uid_map").write_text("0 0 65536\n")
    Path(f"/proc/{pid}/setgroups").write_text("allow")
    Path(f"/proc/{pid}/gid_map").write_text("0 0 65536\n")
    os.write(go_w, b"1")
    _, status = os.waitpid(pid, 0)
    output = (workspace / "check.out").read_text()
    assert os.waitstatus_to_exitcode(status) == 1, output
    assert "[FAIL] isolation" in output, output
    assert "user namespaces" in output and "max_user_namespaces" in output


def test_run_keeps_log_lines_off_stdout(tmp_path: Path) -> None:
    code = tmp_path / "h.sh"
    code.write_text("echo hi\n")
    # SANDBOX_ISOLATION=none makes the engine log a warning on every run: it must go to stderr.
    proc = _cli("run", "-l", "shell", str(code), env={"SANDBOX_ISOLATION": "none"})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["stdout"] == "hi\n"
    assert "isolation_disabled" in proc.stderr


def test_run_stream_prints_the_output_live_then_the_result(tmp_path: Path) -> None:
    code = tmp_path / "live.py"
    code.write_text(
        "import sys, time\n"
        "def handler(event):\n"
        "    print('first', flush=True)\n"
        "    print('oops', file=sys.stderr, flush=True)\n"
        "    time.sleep(1)\n"
        "    sys.stdout.write('no newline')\n"
        "    return 42\n"
    )
    base = {k: v for k, v in os.environ.items() if k not in ("WORKSPACE_PATH", "BWRAP_PATH")}
    proc = subprocess.Popen(
        [*CLI, "run", "--stream", "-l", "python", str(code)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=base,
    )
    assert proc.stdout is not None
    first_line = proc.stdout.readline()
    first_at = time.monotonic()
    rest, err = proc.communicate(timeout=60)
    ended_at = time.monotonic()
    assert first_line == b"first\n"
    assert ended_at - first_at >= 0.5, "the first line came live, not with the result"
    out = (first_line + rest).decode()
    # The program's stdout, a line break of ours after its unfinished line, then the result.
    assert out.startswith("first\nno newline\n{"), out[:200]
    result = json.loads(out[len("first\nno newline\n") :])
    assert (result["status"], result["return_value"], result["stdout"]) == (
        "success",
        42,
        "first\nno newline",
    )
    assert "oops\n" in err.decode()  # the program's stderr on ours
    assert proc.returncode == 0


def test_run_without_stream_prints_only_the_result(tmp_path: Path) -> None:
    code = tmp_path / "h.py"
    code.write_text("import sys\nprint('out')\nprint('err', file=sys.stderr)\n")
    proc = _cli("run", "-l", "python", str(code))
    assert json.loads(proc.stdout)["stdout"] == "out\n" and "err" not in proc.stderr


def test_run_at_a_level_this_host_cannot_give_says_why(tmp_path: Path) -> None:
    code = tmp_path / "h.sh"
    code.write_text("echo hi\n")
    env = {"SANDBOX_ISOLATION": "bwrap", "BWRAP_PATH": "/nonexistent/bwrap"}
    proc = _cli("run", "-l", "shell", str(code), env=env)
    assert proc.returncode == 1 and proc.stdout == ""
    assert "SANDBOX_ISOLATION=bwrap is not available here" in proc.stderr
    assert "remedy: install it: apt-get install -y bubblewrap" in proc.stderr
