"""What reaches the sandbox: interpreter commands and launch messages."""

from __future__ import annotations

import json
import re
import shlex

import pytest

from sandbox_executor.config import Settings
from sandbox_executor.runtimes import (
    SANDBOX_VENV_MOUNT,
    SHELL_EVENT_FILE,
    LaunchJob,
    Layout,
    base_environment,
    interpreter_command,
    launch_message,
    uses_result_channel,
)


def _job(language: str = "python", **overrides: object) -> LaunchJob:
    values: dict[str, object] = {
        "execution_id": "exec_1",
        "language": language,
        "code": "def handler(event):\n    return event\n",
        "event": {"a": 1, "s": "é ü"},
        "env": {"FOO": "bar"},
        "timeout": 7,
        "max_return_bytes": 4096,
    }
    values.update(overrides)
    return LaunchJob(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize("language", ["python", "javascript"])
def test_json_message_carries_everything(language: str) -> None:
    job = _job(language)
    doc = json.loads(launch_message(job))
    assert doc["code"] == job.code
    assert doc["event"] == job.event
    assert doc["env"] == {"FOO": "bar"}
    assert doc["max_return_bytes"] == 4096
    assert doc["context"] == {"execution_id": "exec_1", "timeout": 7}


def test_python_message_paths() -> None:
    doc = json.loads(launch_message(_job("python")))
    assert doc["filename"] == "handler.py"
    assert doc["sys_path"][0] == SANDBOX_VENV_MOUNT


def test_javascript_message_paths() -> None:
    doc = json.loads(launch_message(_job("javascript")))
    assert doc["filename"] == "handler.js"
    assert doc["node_paths"] == [f"{SANDBOX_VENV_MOUNT}/node_modules"]


@pytest.mark.parametrize("language", ["python", "javascript"])
def test_json_message_is_ascii_and_keeps_lone_surrogates(language: str) -> None:
    job = _job(language, code="s = '\ud800'\n", event={"k": "\udfff"})
    raw = launch_message(job)
    raw.decode("ascii")  # a strict decoder inside the sandbox never chokes
    doc = json.loads(raw)
    assert doc["code"] == job.code and doc["event"] == {"k": "\udfff"}


def test_one_mib_code_travels_in_the_message_not_argv() -> None:
    code = "x = 1\n" * (1024 * 1024 // 6)
    job = _job("python", code=code)
    assert json.loads(launch_message(job))["code"] == code
    argv = interpreter_command("python", Settings(), 3, 4, "/dev/fd/9")
    assert sum(len(a) for a in argv) < 64 * 1024


def _shell_prelude(job: LaunchJob) -> tuple[str, str]:
    script = launch_message(job).decode()
    cut = script.rindex(f"> {SHELL_EVENT_FILE}; ") + len(f"> {SHELL_EVENT_FILE}; ")
    return script[:cut], script[cut:]


def test_shell_script_user_code_starts_on_line_one() -> None:
    job = _job("shell", code="echo one\necho two")
    prelude, rest = _shell_prelude(job)
    assert rest == "echo one\necho two\n"
    assert "\n" not in prelude and prelude.endswith("; ")


def test_shell_script_quotes_hostile_values() -> None:
    event = {"q": 'it\'s "quoted" $(touch /tmp/pwned) `id` \n new line'}
    env = {"A": "x'; rm -rf / #", "B": "$HOME"}
    job = _job("shell", code="true", event=event, env=env)
    prelude, _ = _shell_prelude(job)
    lexer = shlex.shlex(prelude, posix=True, punctuation_chars=";<>&")
    lexer.whitespace_split = True
    words = list(lexer)
    # Exports come through as literal NAME=value words, never expanded.
    assert "A=x'; rm -rf / #" in words and "B=$HOME" in words
    assert f"SANDBOX_EVENT_FILE={SHELL_EVENT_FILE}" in words
    printf = words.index("printf")
    assert words[printf + 1] == "%s"
    assert json.loads(words[printf + 2]) == event
    assert words[printf + 3 : printf + 5] == [">", SHELL_EVENT_FILE]


def test_shell_event_file_is_documented_path() -> None:
    assert SHELL_EVENT_FILE == "/tmp/event.json"


def test_interpreter_commands() -> None:
    s = Settings(memory_limit_mb=512, pids_limit=77)
    py = interpreter_command("python", s, 3, 4, "/dev/fd/9")
    assert py[0] == s.python_binary and py[-5:] == ["/dev/fd/9", "3", "4", "R", "77"]
    assert {"-I", "-S", "-u", "-B"} <= set(py) and "-c" not in py
    js = interpreter_command("javascript", s, 3, 4, "/dev/fd/8")
    node_at = js.index(s.node_binary)
    assert js[-4:] == ["/dev/fd/8", "3", "4", "R"] and "-e" not in js
    # node cannot lower its own RLIMIT_NPROC: a wrapper does it, then execs node.
    assert node_at > 0 and any("77" in arg for arg in js[:node_at])
    heap = next(a for a in js if a.startswith("--max-old-space-size="))
    assert int(heap.split("=")[1]) < 512  # the heap cap sits below the rlimit: a clean OOM
    sh = interpreter_command("shell", s, 3, 4, "")
    assert sh[0] == s.bash_binary and sh[-4:] == ["3", "4", "R", "77"]
    with pytest.raises(ValueError):
        interpreter_command("ruby", s, 3, 4, "")  # type: ignore[arg-type]


def test_result_channel_languages() -> None:
    assert uses_result_channel("python") and uses_result_channel("javascript")
    assert not uses_result_channel("shell")


def test_base_environment_has_nothing_of_the_daemon() -> None:
    names = {name for name, _ in base_environment(Settings(), "python")}
    assert {"PATH", "HOME", "TMPDIR", "LANG"} <= names
    assert not any(re.search("TOKEN|SECRET|KEY|CONTROL_PLANE", n) for n in names)
    assert dict(base_environment(Settings(), "python"))["HOME"] == "/workspace"
    assert "NODE_PATH" in dict(base_environment(Settings(), "javascript"))


def test_a_layout_without_mount_points_reaches_message_and_environment() -> None:
    layout = Layout(
        workspace="/srv/ws",
        venv="/srv/venv.d/tree-1",
        tmp="/tmp/sandbox-tmp-1-x",
        home="/tmp/sandbox-tmp-1-x",
    )
    job = LaunchJob("e1", "shell", "echo", {"a": 1}, {}, 5, 100)
    script = launch_message(job, layout).decode()
    assert "export SANDBOX_EVENT_FILE=/tmp/sandbox-tmp-1-x/event.json;" in script
    assert "> /tmp/sandbox-tmp-1-x/event.json;" in script
    py = json.loads(launch_message(LaunchJob("e1", "python", "x", {}, {}, 5, 100), layout))
    assert py["sys_path"][0] == "/srv/venv.d/tree-1"
    js = json.loads(launch_message(LaunchJob("e1", "javascript", "x", {}, {}, 5, 100), layout))
    assert js["node_paths"] == ["/srv/venv.d/tree-1/node_modules"]
    env = dict(base_environment(Settings(), "javascript", layout))
    assert env["HOME"] == env["TMPDIR"] == "/tmp/sandbox-tmp-1-x"
    assert env["PYTHONPATH"] == "/srv/venv.d/tree-1" and env["NODE_PATH"] == "/srv/venv.d/tree-1/node_modules"


def test_without_a_user_namespace_the_commands_leave_the_process_cap_alone() -> None:
    s = Settings(pids_limit=77)
    py = interpreter_command("python", s, 3, 4, "/dev/fd/5", own_nproc=False)
    assert py[-4:] == ["/dev/fd/5", "3", "4", "R"]
    js = interpreter_command("javascript", s, 3, 4, "/dev/fd/5", own_nproc=False)
    assert js[0] == s.node_binary and not any("77" in arg for arg in js)
    sh = interpreter_command("shell", s, 3, 4, "", own_nproc=False)
    assert sh[-4:] == ["3", "4", "R", ""]  # an empty cap: the bootstrap's ulimit is skipped
