"""Resources: bombs, floods, full disks and immortal processes end with the execution."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from tests.security.helpers import LANGUAGES, LEVEL, SUITE_ENV, Daemon

MIB = 1024 * 1024
FILE_CAP = int(SUITE_ENV["MAX_FILE_SIZE_MB"]) * MIB
OUTPUT_CAP = int(SUITE_ENV["MAX_OUTPUT_BYTES"])


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _processes_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


FORK_BOMB = {
    "python": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
    "javascript": (
        "const cp = require('child_process');\n"
        "for (;;) { try { cp.spawn('sh', ['-c', 'while :; do :; done']); } catch (e) {} }\n"
    ),
    "shell": "bomb() { bomb | bomb & }\nbomb\nsleep 10\n",
}


@pytest.mark.parametrize("language", LANGUAGES)
def test_fork_bomb(fresh: Daemon, language: str) -> None:
    started = time.monotonic()
    result = fresh.attack(FORK_BOMB[language], language, timeout=1)
    assert result["status"] == "timeout", (result["status"], result["stderr"][-500:])
    assert time.monotonic() - started < 15


MEMORY_BOMB = {
    "python": "def handler(event):\n    hog = []\n    while True:\n        hog.append(bytearray(16 << 20))\n",
    "javascript": (
        "exports.handler = async () => { const hog = []; for (;;) hog.push(Buffer.alloc(16 << 20, 1)); };\n"
    ),
    "shell": "s=x\nwhile :; do s=$s$s; done\n",
}


@pytest.mark.parametrize("language", LANGUAGES)
def test_memory_bomb(daemon: Daemon, language: str) -> None:
    rss_before = _rss_kib(daemon.pid)
    result = daemon.attack(MEMORY_BOMB[language], language, timeout=5)
    assert result["status"] in ("failed", "timeout"), result["status"]
    if result["status"] == "failed":
        assert result["termination_reason"] in ("memory_limit", "signaled"), result
    assert result["metrics"]["peak_memory_mb"] < int(SUITE_ENV["MEMORY_LIMIT_MB"]) * 1.5
    # The daemon's own memory does not follow the sandbox's.
    assert _rss_kib(daemon.pid) - rss_before < 64 * 1024


# Each process stays under its own RLIMIT_DATA (MEMORY_LIMIT_MB); six of them do not.
MEMORY_ACROSS_PROCESSES = {
    "python": r"""
import os, time
def handler(event):
    for _ in range(6):
        if os.fork() == 0:
            hold = b"x" * (100 << 20)
            time.sleep(30)
            os._exit(0)
    time.sleep(30)
""",
    "javascript": r"""
const cp = require('child_process');
const hog = 'const b = Buffer.alloc(100 << 20, 1); setTimeout(() => {}, 30000);';
for (let i = 0; i < 6; i++) cp.spawn(process.execPath, ['-e', hog], { stdio: 'ignore' });
setTimeout(() => {}, 30000);
""",
    "shell": r"""
for i in 1 2 3 4 5 6; do python3 -c 'import time; hold = b"x" * (100 << 20); time.sleep(30)' & done
wait
""",
}


@pytest.mark.parametrize("language", LANGUAGES)
def test_memory_across_processes_is_bounded_per_run(fresh: Daemon, language: str) -> None:
    limit = int(SUITE_ENV["MEMORY_LIMIT_MB"])
    started = time.monotonic()
    result = fresh.attack(MEMORY_ACROSS_PROCESSES[language], language, timeout=20)
    assert result["status"] == "failed", (result["status"], result["stderr"][-500:])
    assert result["termination_reason"] == "memory_limit", result["stderr"][-500:]
    assert f"more than {limit} MiB in total across its processes" in result["stderr"]
    # Under the watchdog (an unprivileged daemon), what the run held when it was stopped.
    assert result["metrics"]["peak_memory_mb"] < limit + 96
    assert time.monotonic() - started < 15


WRITE_CAP = int(SUITE_ENV["MAX_WORKSPACE_WRITE_MB"]) * MIB
# Many files, each under MAX_FILE_SIZE_MB: only the per-run write cap stops them.
FILL_WORKSPACE = {
    "python": r"""
def handler(event):
    for i in range(16):
        with open(f"part{i}", "wb") as fh:
            for _ in range(16):
                fh.write(b"\0" * (1 << 20))
                fh.flush()
""",
    "javascript": r"""
const fs = require('fs');
for (let i = 0; i < 16; i++) {
  const fd = fs.openSync(`part${i}`, 'w');
  for (let j = 0; j < 16; j++) fs.writeSync(fd, Buffer.alloc(1 << 20));
  fs.closeSync(fd);
}
""",
    "shell": "for i in $(seq 16); do head -c 16M /dev/zero > part$i; done\n",
}


@pytest.mark.parametrize("language", LANGUAGES)
def test_filling_the_workspace_with_many_files_is_stopped(fresh: Daemon, language: str) -> None:
    result = fresh.attack(FILL_WORKSPACE[language], language, timeout=20)
    assert result["status"] == "failed", (result["status"], result["stderr"][-500:])
    assert result["termination_reason"] == "disk_limit", result["stderr"][-500:]
    written = sum(p.stat().st_size for p in fresh.workspace.glob("part*"))
    # Stopped near the cap, far from the 256 MiB it set out to write; its files stay.
    assert WRITE_CAP < written < WRITE_CAP + 64 * MIB, written
    assert result["artifacts"], "the files it wrote are reported"


FILL_DISKS = {
    "python": r"""
import os
def fill(path, total):
    written = 0
    try:
        with open(path, "wb") as fh:
            while written < total:
                written += fh.write(b"\0" * (1 << 20))
                fh.flush()
    except OSError as exc:
        return [written, type(exc).__name__ + ":" + str(exc.errno)]
    return [written, "ok"]
def handler(event):
    out = {"tmp": fill("/tmp/fill", 64 << 20)}
    if os.path.exists("/tmp/fill"):
        os.unlink("/tmp/fill")
    # Two files each under the per-file cap, together over the tmpfs size.
    tmpdir, half = os.environ["TMPDIR"], event["tmpfs"] * 3 // 4
    out["tmpdir"] = [fill(f"{tmpdir}/a", half), fill(f"{tmpdir}/b", half)]
    out["workspace"] = fill("fill", 64 << 20)
    return out
""",
    "javascript": r"""
const fs = require('fs');
exports.handler = async () => {
  let written = 0, error = 'ok';
  try {
    const fd = fs.openSync('/tmp/fill', 'w');
    for (; written < 64 << 20; ) written += fs.writeSync(fd, Buffer.alloc(1 << 20));
  } catch (e) { error = e.code; }
  return { tmp: [written, error] };
};
""",
    "shell": r"""
head -c 64M /dev/zero > /tmp/fill; echo "tmp rc=$?"
ls -l /tmp/fill 2>/dev/null | awk '{print "tmp size", $5}'
head -c 64M /dev/zero > fill; echo "workspace rc=$?"
""",
}


@pytest.mark.parametrize("language", LANGUAGES)
def test_filling_tmp_and_workspace_is_bounded(fresh: Daemon, language: str) -> None:
    """bwrap levels: /tmp is a tmpfs of TMPFS_SIZE_MB (ENOSPC). landlock: /tmp is not
    writable at all (EACCES) and TMPDIR, a private directory, is bounded per file
    (RLIMIT_FSIZE) but not in total (documented: the daemon's temporary file system is the
    bound). Every level: RLIMIT_FSIZE caps a workspace file (EFBIG)."""
    tmpfs = int(SUITE_ENV["TMPFS_SIZE_MB"]) * MIB
    result = fresh.attack(FILL_DISKS[language], language, event={"tmpfs": tmpfs})
    landlock = LEVEL == "landlock"
    if language == "python":
        value = result["return_value"]
        if landlock:
            assert value["tmp"] == [0, "PermissionError:13"], value  # EACCES
            assert value["tmpdir"] == [[tmpfs * 3 // 4, "ok"]] * 2, value  # the documented gap
        else:
            assert value["tmp"][1] == "OSError:28" and value["tmp"][0] <= tmpfs, value  # ENOSPC
            assert value["tmpdir"][1][1] == "OSError:28", value
        assert value["workspace"][1] == "OSError:27" and value["workspace"][0] <= FILE_CAP, value  # EFBIG
    elif language == "javascript":
        assert result["return_value"]["tmp"][1] == ("EACCES" if landlock else "ENOSPC"), result[
            "return_value"
        ]
    else:
        out = result["stdout"]
        assert "tmp rc=1" in out and "workspace rc=" in out and "workspace rc=0" not in out, out
        if landlock:
            assert "tmp size" not in out, out
        else:
            size = int(out.split("tmp size")[1].split()[0])
            assert size <= tmpfs
    fill = fresh.workspace / "fill"
    assert not fill.exists() or fill.stat().st_size <= FILE_CAP


MANY_FILES = r"""
import os, time
def create(root, limit, seconds):
    os.makedirs(root, exist_ok=True)
    deadline = time.monotonic() + seconds
    n = 0
    try:
        while n < limit and time.monotonic() < deadline:
            os.close(os.open(f"{root}/{n}", os.O_CREAT | os.O_WRONLY, 0o644))
            n += 1
    except OSError as exc:
        return [n, type(exc).__name__]
    return [n, "ok"]
def handler(event):
    # As many as 1.5 s allow in the temporary directory (a million, in a tmpfs on a fast
    # machine), and more than the report cap in the workspace (whose disk may be slow).
    tmp = os.environ["TMPDIR"]
    return {"tmp": create(f"{tmp}/many", 1_000_000, 1.5), "workspace": create("many", 1500, 6),
            "tmpdir": tmp}
"""


def test_a_million_tiny_files(fresh: Daemon) -> None:
    """The temporary directory's files go with the run: a tmpfs (bwrap levels) or the
    private directory the daemon removes (landlock)."""
    result = fresh.attack(MANY_FILES, timeout=10)
    assert result["status"] == "success", result["stderr"][-500:]
    created = result["return_value"]
    assert created["workspace"] == [1500, "ok"], created
    if LEVEL == "landlock":  # on the daemon's temporary file system (a disk here), then gone
        assert created["tmp"][0] > 1000, created
        # Removed with the spent sandbox, in the background once the result is out.
        deadline = time.monotonic() + 10
        while Path(created["tmpdir"]).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not Path(created["tmpdir"]).exists(), created
    else:
        assert created["tmp"][0] > 10_000, created
    # The report is capped, not thousands of entries long.
    assert result["artifacts_truncated"] is True and len(result["artifacts"]) <= 1000
    # The workspace keeps them: later runs stay fast (the scan is capped too) and correct.
    started = time.monotonic()
    after = fresh.execute("open('new.txt', 'w').write('x')\ndef handler(e): return 1\n")
    assert after["status"] == "success"
    assert "new.txt" in after["artifacts"]
    assert time.monotonic() - started < 5


OUTPUT_FLOOD = {
    "python": r"""
import os, sys, threading
def flood(fd):
    chunk = b"x" * 65536
    while True:
        os.write(fd, chunk)
threading.Thread(target=flood, args=(2,), daemon=True).start()
flood(1)
""",
    "javascript": r"""
const fs = require('fs');
const chunk = Buffer.alloc(65536, 'x');
for (;;) { fs.writeSync(1, chunk); fs.writeSync(2, chunk); }
""",
    "shell": "yes xxxxxxxxxxxxxxxx >&2 &\nyes yyyyyyyyyyyyyyyyyyyy\n",
}


@pytest.mark.parametrize("language", LANGUAGES)
def test_output_flood_on_both_streams(daemon: Daemon, language: str) -> None:
    rss_before = _rss_kib(daemon.pid)
    result = daemon.attack(OUTPUT_FLOOD[language], language, timeout=1)
    assert result["status"] == "timeout"
    assert result["stdout_truncated"] and result["stderr_truncated"]
    assert len(result["stdout"].encode()) <= OUTPUT_CAP
    # stderr may carry the timeout notice after the captured bytes.
    assert len(result["stderr"].encode()) <= OUTPUT_CAP + 200
    assert _rss_kib(daemon.pid) - rss_before < 64 * 1024


def _heartbeat(marker: str) -> str:
    # A loop whose command line carries ``marker`` so the host can look for survivors.
    return f"while :; do date +%s%N > heartbeat; sleep 0.05; done # {marker}"


ESCAPE_THE_HANDLER = {
    "python": r"""
import os, subprocess
def handler(event):
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.execv("/bin/sh", ["sh", "-c", event["loop"]])
        os._exit(0)
    return "returned"
""",
    "javascript": r"""
const cp = require('child_process');
exports.handler = async (event) => {
  cp.spawn('sh', ['-c', event.loop], { detached: true, stdio: 'ignore' }).unref();
  return 'returned';
};
""",
    "shell": r"""
loop=$(sed 's/.*"loop": *"\([^"]*\)".*/\1/' "$SANDBOX_EVENT_FILE")
setsid nohup sh -c "$loop" >/dev/null 2>&1 &
disown
trap '' HUP TERM
echo returned
""",
}


@pytest.mark.parametrize("language", LANGUAGES)
def test_setsid_double_fork_does_not_outlive_the_execution(fresh: Daemon, language: str) -> None:
    marker = f"sec-survivor-{uuid.uuid4().hex[:10]}"
    started = time.monotonic()
    result = fresh.attack(ESCAPE_THE_HANDLER[language], language, event={"loop": _heartbeat(marker)})
    assert result["status"] == "success", result["stderr"][-500:]
    assert time.monotonic() - started < 5  # the handler's return ends the run, no waiting
    assert _processes_with(marker) == []
    beat = fresh.workspace / "heartbeat"
    first = beat.read_bytes() if beat.exists() else b""
    time.sleep(0.3)
    assert (beat.read_bytes() if beat.exists() else b"") == first, "a child is still writing"


IGNORE_SIGTERM = {
    "python": (
        "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\nsignal.signal(signal.SIGHUP, signal.SIG_IGN)\n"
        "while True:\n    pass\n"
    ),
    "javascript": (
        "for (const s of ['SIGTERM', 'SIGINT', 'SIGHUP']) process.on(s, () => {});\nfor (;;) {}\n"
    ),
    "shell": "trap '' TERM INT HUP\nwhile :; do :; done\n",
}


@pytest.mark.parametrize("language", LANGUAGES)
def test_process_ignoring_sigterm_is_killed_at_the_timeout(daemon: Daemon, language: str) -> None:
    started = time.monotonic()
    result = daemon.attack(IGNORE_SIGTERM[language], language, timeout=1)
    assert result["status"] == "timeout"
    assert result["exit_code"] == -1
    assert result["execution_time"] < 2.5
    assert time.monotonic() - started < 6


FILL_DEV = {
    "python": r"""
import os
def fill(path):
    written = 0
    try:
        with open(path, "wb") as fh:
            while written < (64 << 20):
                written += fh.write(b"\0" * (1 << 20))
                fh.flush()
    except OSError as exc:
        return [written, exc.strerror]
    return [written, "ok"]
def handler(event):
    out = {"dev": fill("/dev/fill"), "shm": fill(event["shm"])}
    os.unlink(event["shm"])  # at the landlock level it is the host's /dev/shm
    return out
""",
    "shell": 'head -c 64M /dev/zero > /dev/fill; echo "dev rc=$?"\n'
    'shm=$(sed \'s/.*"shm": *"\\([^"]*\\)".*/\\1/\' "$SANDBOX_EVENT_FILE")\n'
    'head -c 64M /dev/zero > "$shm"; echo "shm rc=$?"; wc -c < "$shm"; rm -f "$shm"\n',
}


@pytest.mark.parametrize("language", ["python", "shell"])
def test_dev_and_dev_shm_are_not_unbounded_memory(daemon: Daemon, language: str) -> None:
    """bwrap's /dev is a tmpfs (RAM) of its own: it must not take writes beyond the budget.
    landlock: /dev is the container's and not writable; /dev/shm is the container's too,
    shared (POSIX semaphores need it) and bounded per file by RLIMIT_FSIZE only: the
    documented gap (Docker gives a container a 64 MiB /dev/shm)."""
    shm = f"/dev/shm/fill-{uuid.uuid4().hex[:8]}"
    result = daemon.attack(FILL_DEV[language], language, event={"shm": shm})
    tmpfs = int(SUITE_ENV["TMPFS_SIZE_MB"]) * MIB
    landlock = LEVEL == "landlock"
    if language == "python":
        value = result["return_value"]
        assert value["dev"] == [0, "Permission denied" if landlock else "Read-only file system"], value
        if landlock:
            assert value["shm"] == [FILE_CAP, "File too large"], value
        else:
            assert value["shm"][1] == "No space left on device" and value["shm"][0] <= tmpfs, value
    else:
        lines = result["stdout"].split()
        assert "rc=0" not in result["stdout"], result["stdout"]
        assert int(lines[-1]) == FILE_CAP if landlock else int(lines[-1]) <= tmpfs
    assert not Path(shm).exists()
