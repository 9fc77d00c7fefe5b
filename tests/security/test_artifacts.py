"""Artifacts: the daemon scans a workspace written by hostile code without following it
anywhere, blocking on it, or choking on it."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator

import pytest

from tests.security.helpers import SECRETS, SUITE_ENV, Daemon, start_daemon

CONTROL = b"control file: the scan still works\n"
CONTROL_SHA = hashlib.sha256(CONTROL).hexdigest()


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    running = start_daemon(fast_disk=True)
    yield running
    log = running.server.log_path.read_text(errors="replace")
    running.close()
    assert not [secret for secret in SECRETS if secret in log]


def _control_line(language: str) -> str:
    if language == "shell":
        return f"printf '{CONTROL.decode().strip()}\\n' > control.txt\n"
    return f"open('control.txt', 'wb').write({CONTROL!r})\n"


def _assert_only_control(result: dict, extra: set[str] | None = None) -> None:
    """The scan reported the control file (with the right hash) and nothing it must not."""
    allowed = {"control.txt", *(extra or set())}
    assert set(result["artifacts"]) <= allowed, set(result["artifacts"]) - allowed
    details = {d["path"]: d for d in result["artifact_details"]}
    assert details["control.txt"]["sha256"] == CONTROL_SHA


HOST_SYMLINKS = (
    r"""
import os
def handler(event):
    made = []
    for name, target in (("shadow", "/etc/shadow"), ("passwd", "/etc/passwd"), ("root", "/root"),
                         ("slash", "/"), ("results", event["results_dir"]), ("log", event["log"]),
                         ("environ", "/proc/self/environ"), ("daemon_env", f"/proc/{event['pid']}/environ"),
                         ("dangling", "/nonexistent"), ("dot", "."), ("up", "..")):
        os.symlink(target, name)
        made.append(name)
    # A directory whose child is a link to the host's root: the walk must not descend.
    os.mkdir("dir")
    os.symlink("/", "dir/escape")
    os.symlink("/etc", "dir/etc")
    # Loops.
    os.symlink("loop_b", "loop_a")
    os.symlink("loop_a", "loop_b")
    os.symlink("../dir", "dir/self")
"""
    + "\n"
)


def test_symlinks_to_host_files_and_loops_are_not_followed(daemon: Daemon) -> None:
    daemon.clean_workspace()
    code = HOST_SYMLINKS + "    " + _control_line("python") + "    return made\n"
    server = daemon.server
    event = {"results_dir": str(server.results_dir), "log": str(server.log_path), "pid": daemon.pid}
    started = time.monotonic()
    result = daemon.attack(code, event=event)
    assert result["status"] == "success", result["stderr"][-1000:]
    assert time.monotonic() - started < 5
    _assert_only_control(result)
    daemon.clean_workspace()


LINKS_AND_SPECIAL_FILES = (
    r"""
import os, socket
def handler(event):
    out = {}
    for name, target in (("pw", "/etc/passwd"), ("py", "/usr/bin/python3"), ("proc", "/proc/self/status")):
        try:
            os.link(target, name)
            out[name] = "linked"
        except OSError as exc:
            out[name] = type(exc).__name__
    open("original.txt", "w").write("o")
    os.link("original.txt", "hardlink.txt")
    os.mkfifo("report.txt")          # a FIFO with an ordinary name
    os.mkfifo("fifo")
    s = socket.socket(socket.AF_UNIX)
    s.bind("socket.sock")
    s.listen(1)
    for name, dev in (("null", (1, 3)), ("mem", (1, 1)), ("sda", (8, 0))):
        try:
            os.mknod(name, 0o666 | 0o020000, os.makedev(*dev))
            out["mknod_" + name] = "created"
        except OSError as exc:
            out["mknod_" + name] = type(exc).__name__
"""
    + "\n"
)


def test_hard_links_fifos_sockets_and_device_nodes(daemon: Daemon) -> None:
    daemon.clean_workspace()
    code = LINKS_AND_SPECIAL_FILES + "    " + _control_line("python") + "    return out\n"
    started = time.monotonic()
    result = daemon.attack(code)
    assert result["status"] == "success", result["stderr"][-1000:]
    assert time.monotonic() - started < 5  # opening the FIFOs would block forever
    value = result["return_value"]
    # EXDEV across mounts; on one file system protected_hardlinks (and Landlock's REFER).
    assert value["pw"] in ("OSError", "PermissionError") and value["py"] in ("OSError", "PermissionError"), (
        value
    )
    assert value["proc"] in ("OSError", "PermissionError"), value
    assert {value["mknod_null"], value["mknod_mem"], value["mknod_sda"]} == {"PermissionError"}
    _assert_only_control(result, {"original.txt", "hardlink.txt"})
    daemon.clean_workspace()


SHELL_SPECIAL_FILES = r"""
ln -s /etc/shadow shadow; ln -s / slash; ln -s loop2 loop1; ln -s loop1 loop2
mkfifo pipe.txt; ln /etc/passwd pw 2>/dev/null; mknod dev c 1 1 2>/dev/null
mkdir -p a/b; ln -s ../.. a/b/up
"""


def test_shell_made_links_and_fifos(daemon: Daemon) -> None:
    daemon.clean_workspace()
    result = daemon.attack(SHELL_SPECIAL_FILES + _control_line("shell"), "shell")
    assert result["status"] == "success", result["stderr"]
    _assert_only_control(result)
    daemon.clean_workspace()


HUNDRED_K_FILES = r"""
import os
def handler(event):
    os.mkdir("many")
    for i in range(event["n"]):
        os.close(os.open(f"many/{i}", os.O_CREAT | os.O_WRONLY, 0o644))
    return event["n"]
"""


def test_a_hundred_thousand_files(daemon: Daemon) -> None:
    daemon.clean_workspace()
    started = time.monotonic()
    result = daemon.attack(HUNDRED_K_FILES, event={"n": 100_000}, timeout=30)
    assert result["status"] == "success", result["stderr"][-1000:]
    assert result["artifacts_truncated"] is True
    assert len(result["artifacts"]) <= int(SUITE_ENV["ARTIFACT_MAX_FILES"])
    assert time.monotonic() - started < 30
    daemon.clean_workspace()


EMPTY_DIRECTORIES = r"""
import os
def handler(event):
    for i in range(event["n"]):
        os.makedirs(f"tree/{i % 100}/{i}")
    return event["n"]
"""


def test_a_tree_of_empty_directories_is_not_walked_in_full(daemon: Daemon) -> None:
    # Directories count toward ARTIFACT_MAX_FILES: 30k empty ones (no file to hit the cap)
    # must not make every later run walk them all.
    daemon.clean_workspace()
    result = daemon.attack(EMPTY_DIRECTORIES, event={"n": 30_000}, timeout=30)
    assert result["status"] == "success", result["stderr"][-500:]
    assert result["artifacts_truncated"] is True
    after = daemon.execute("def handler(event):\n    return 1\n")
    assert after["status"] == "success" and after["artifacts_truncated"] is True
    daemon.clean_workspace()


DEEP_TREE = {
    "python": r"""
import os
def handler(event):
    open("control.txt", "wb").write(CONTROL)
    for _ in range(event["depth"]):
        os.mkdir("d")
        os.chdir("d")
    open("bottom.txt", "w").write("x")
    return len("/d" * event["depth"])
""".replace("CONTROL", repr(CONTROL)),
    "shell": "printf 'control file: the scan still works\\n' > control.txt\n"
    # 1500 levels, 150 at a time (bash's cd is quadratic in the depth of $PWD).
    'p=$(printf \'d/%.0s\' $(seq 150))\nfor i in $(seq 10); do mkdir -p "$p" && cd "$p" || exit 1; done\n'
    "touch bottom.txt\n",
}


@pytest.mark.parametrize("language", ["python", "shell"])
def test_deep_trees(daemon: Daemon, language: str) -> None:
    daemon.clean_workspace()
    result = daemon.attack(DEEP_TREE[language], language, event={"depth": 3000}, timeout=10)
    assert result["status"] == "success", (result["stderr"][-1000:], result.get("error"))
    if language == "python":
        assert result["return_value"] > 4096  # deeper than PATH_MAX
    _assert_only_control(result)
    assert result["artifacts_truncated"] is True
    # The tree stays in the workspace: every later run must still work.
    again = daemon.execute("def handler(event):\n    return 'still fine'\n")
    assert again["status"] == "success" and again["return_value"] == "still fine", again.get("error")
    daemon.clean_workspace()


HOSTILE_NAMES = (
    r"""
import os
def handler(event):
    made = []
    for name in (b"new\nline.txt", b"\xff\xfe invalid.txt", b"tab\there.txt", b"esc\x1b[31m.txt",
                 b"rtl\xe2\x80\xaetxt.exe", b"-rf", b"x" * 255, "caf\u00e9.txt".encode()):
        with open(b"" + name, "wb") as fh:
            fh.write(b"data")
        made.append(name.decode("utf-8", "backslashreplace"))
    os.mkdir(b"dir\nwith\nnewlines")
    open(b"dir\nwith\nnewlines/inner.txt", "w").write("hidden")
"""
    + "\n"
)


def test_file_names_with_newlines_and_invalid_utf8(daemon: Daemon) -> None:
    daemon.clean_workspace()
    code = HOSTILE_NAMES + "    " + _control_line("python") + "    return made\n"
    result = daemon.attack(code)  # the response is parsed as strict JSON
    assert result["status"] == "success", result["stderr"][-1000:]
    reported = set(result["artifacts"])
    # Names that JSON paths cannot carry faithfully are left out; the rest are exact.
    assert reported == {"control.txt", "rtl\u202etxt.exe", "-rf", "x" * 255, "caf\u00e9.txt"}, reported
    for path in reported:
        assert "\n" not in path and "\x1b" not in path and "\t" not in path
    daemon.clean_workspace()
