"""The bootstrap programs run by the real interpreters over plain pipes, without bwrap:
the start marker, the launch message, the outcome, and what user code can see of them."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from sandbox_executor.bootstraps import BOOTSTRAP_DIR, PYTHON_CODE_NAME, Bootstraps, python_program
from sandbox_executor.config import Settings
from sandbox_executor.runtimes import (
    BOOTSTRAP_FD,
    INPUT_FD,
    RESULT_FD,
    LaunchJob,
    interpreter_command,
    launch_message,
)

ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
PROGRAM = f"/dev/fd/{BOOTSTRAP_FD}"


@pytest.fixture
def bootstraps() -> Iterator[Bootstraps]:
    loaded = Bootstraps.load("/usr/bin/python3")
    yield loaded
    loaded.close()


def _job(language: str, code: str) -> LaunchJob:
    return LaunchJob("exec_b", language, code, {"n": 2}, {"GREETING": "hi"}, 5, 4096)  # type: ignore[arg-type]


def _start(argv: list[str], program_fd: int | None) -> tuple[subprocess.Popen[bytes], int, int]:
    """Start ``argv`` with the protocol's pipes on the numbers runtimes.py promises (and the
    program on BOOTSTRAP_FD); every other descriptor of ours is close-on-exec."""
    in_r, in_w = os.pipe()
    res_r, res_w = os.pipe()

    def place_fds() -> None:  # in the child, before exec
        os.dup2(in_r, INPUT_FD)
        os.dup2(res_w, RESULT_FD)
        if program_fd is not None:
            os.dup2(program_fd, BOOTSTRAP_FD)

    proc = subprocess.Popen(
        argv, close_fds=False, preexec_fn=place_fds, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    os.close(in_r)
    os.close(res_w)
    return proc, in_w, res_r


def _run(argv: list[str], program_fd: int | None, message: bytes) -> tuple[bytes, dict[str, Any], str]:
    """Run one launch message through ``argv``; return (marker, outcome, stderr)."""
    proc, in_w, res_r = _start(argv, program_fd)
    marker = os.read(res_r, 1)
    os.write(in_w, message)
    os.close(in_w)
    _, err = proc.communicate(timeout=30)
    rest = b""
    while chunk := os.read(res_r, 65536):
        rest += chunk
    os.close(res_r)
    return marker, json.loads(rest), err.decode()


def _python(bootstraps: Bootstraps, code: str) -> tuple[bytes, dict[str, Any], str]:
    assert bootstraps.lent("python", BOOTSTRAP_FD) == {BOOTSTRAP_FD: bootstraps.python_fd}
    argv = interpreter_command("python", Settings(), INPUT_FD, RESULT_FD, PROGRAM)
    return _run(argv, bootstraps.python_fd, launch_message(_job("python", code)))


def test_python_bootstrap_marks_its_start_then_runs_the_handler(bootstraps: Bootstraps) -> None:
    code = "import os\ndef handler(event, context):\n    return [event['n'] * 21, os.environ['GREETING']]\n"
    marker, outcome, _ = _python(bootstraps, code)
    assert marker == b"R" and outcome == {"ok": True, "return_value": [42, "hi"]}


def test_python_bootstrap_is_gone_before_user_code_runs(bootstraps: Bootstraps) -> None:
    code = (
        "import os, sys\n"
        "def handler(event):\n"
        "    fds = sorted(int(fd) for fd in os.listdir('/proc/self/fd'))\n"
        "    return [fds, sys.argv, sys.modules['__main__'].__file__]\n"
    )
    _, outcome, _ = _python(bootstraps, code)
    fds, argv, main_file = outcome["return_value"]
    # (3, the input pipe's old number, is listdir's own descriptor by then.)
    assert BOOTSTRAP_FD not in fds and RESULT_FD not in fds
    assert argv == ["handler.py"] and main_file == "handler.py"


def test_python_traceback_starts_in_user_code(bootstraps: Bootstraps) -> None:
    marker, outcome, stderr = _python(bootstraps, "def handler(event):\n    raise ValueError('boom')\n")
    assert marker == b"R" and outcome["ok"] is False and outcome["error_type"] == "ValueError"
    assert stderr.startswith('Traceback (most recent call last):\n  File "handler.py", line 2, in handler')
    assert PYTHON_CODE_NAME not in stderr and "boom" in outcome["error"]


def test_python_bootstrap_also_runs_from_its_source_file() -> None:
    source = str(BOOTSTRAP_DIR / "python_bootstrap.py")
    argv = interpreter_command("python", Settings(), INPUT_FD, RESULT_FD, source)
    message = launch_message(_job("python", "def handler(event):\n    raise KeyError(1)\n"))
    marker, outcome, stderr = _run(argv, None, message)
    assert marker == b"R" and outcome["error_type"] == "KeyError"
    assert "python_bootstrap.py" not in stderr  # its frames are recognised by its file name


def test_python_program_is_bytecode_only_for_the_same_interpreter() -> None:
    assert python_program("/usr/bin/python3")[:4] != b"# Ru"  # a .pyc header, not the source
    assert python_program("/usr/bin/node").startswith(b"# Runs inside the sandbox")


def test_the_programs_cannot_be_changed(bootstraps: Bootstraps) -> None:
    for fd in (bootstraps.python_fd, bootstraps.node_fd):
        with pytest.raises(PermissionError):
            os.pwrite(fd, b"x", 0)
        with pytest.raises(PermissionError), open(f"/proc/self/fd/{fd}", "r+b") as reopened:
            reopened.write(b"x")
            reopened.flush()


def test_node_bootstrap_runs_the_handler_and_closes_its_program(bootstraps: Bootstraps) -> None:
    code = (
        "const fs = require('fs');\n"
        "exports.handler = async (event) => ({ n: event.n, fds: fs.readdirSync('/proc/self/fd').map(Number),"
        " main: require.main === module });\n"
    )
    argv = interpreter_command("javascript", Settings(), INPUT_FD, RESULT_FD, PROGRAM)
    marker, outcome, _ = _run(argv, bootstraps.node_fd, launch_message(_job("javascript", code)))
    assert marker == b"R" and outcome["ok"] is True
    value = outcome["return_value"]
    assert value["n"] == 2 and value["main"] is True
    assert BOOTSTRAP_FD not in value["fds"]


def test_shell_bootstrap_marks_its_start() -> None:
    argv = interpreter_command("shell", Settings(), INPUT_FD, RESULT_FD, "")
    proc, in_w, res_r = _start(argv, None)
    assert os.read(res_r, 1) == b"R"
    os.write(in_w, b"echo shell $((6 * 7))\n")
    os.close(in_w)
    out, _ = proc.communicate(timeout=30)
    assert out == b"shell 42\n" and proc.returncode == 0
    assert os.read(res_r, 10) == b""  # closed before the script ran
    os.close(res_r)
