"""Host data: nothing of the host, the daemon or its secrets is readable from a sandbox."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.security.helpers import LANGUAGES, LEVEL, SECRETS, Daemon, leaks
from tests.support.server import REPO


def _host_lines(path: str) -> list[str]:
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return []
    # Only lines that cannot come from the sandbox's synthetic files.
    return [ln for ln in lines if ln and not ln.startswith(("root:", "nobody:", "sandbox:", "#"))]


def _targets(daemon: Daemon) -> dict[str, Any]:
    return {
        "daemon_pid": daemon.pid,
        "results_dir": str(daemon.server.results_dir),
        "log": str(daemon.server.log_path),
        "source": str(REPO / "src" / "sandbox_executor" / "engine.py"),
        "venv": str(Path(sys.prefix)),
        "python": sys.executable,
    }


READ_HOST_FILES = {
    "python": r"""
import os
def handler(event):
    out = {}
    for path in ["/etc/shadow", "/etc/passwd", "/etc/gshadow", "/root", "/home",
                 f"/proc/{event['daemon_pid']}/environ", f"/proc/{event['daemon_pid']}/cmdline",
                 event["results_dir"], event["log"], event["source"], event["venv"]]:
        try:
            if os.path.isdir(path):
                out[path] = sorted(os.listdir(path))
            else:
                with open(path, "rb") as fh:
                    out[path] = fh.read(1 << 20).decode("utf-8", "replace")
        except OSError as exc:
            out[path] = type(exc).__name__
    for mod in ("sandbox_executor", "fastapi", "uvicorn"):
        try:
            __import__(mod)
            out[mod] = "imported"
        except ImportError:
            out[mod] = "ImportError"
    return out
""",
    "javascript": r"""
const fs = require('fs');
exports.handler = async (event) => {
  const out = {};
  for (const p of ['/etc/shadow', '/etc/passwd', '/etc/gshadow', '/root', '/home',
                   `/proc/${event.daemon_pid}/environ`, `/proc/${event.daemon_pid}/cmdline`,
                   event.results_dir, event.log, event.source, event.venv]) {
    try {
      out[p] = fs.statSync(p).isDirectory() ? fs.readdirSync(p) : fs.readFileSync(p, 'utf8');
    } catch (e) { out[p] = e.code; }
  }
  return out;
};
""",
    "shell": r"""
ev=$(cat "$SANDBOX_EVENT_FILE")
get() { printf '%s' "$ev" | sed -n "s/.*\"$1\": *\"\{0,1\}\([^\",}]*\).*/\1/p"; }
pid=$(get daemon_pid)
for p in /etc/shadow /etc/passwd /etc/gshadow /proc/$pid/environ /proc/$pid/cmdline \
         "$(get results_dir)" "$(get log)" "$(get source)"; do
  echo "== $p"; cat "$p" 2>&1 | tr '\0' '\n'
done
for d in /root /home "$(get venv)" "$(get results_dir)"; do echo "== $d"; ls -la "$d" 2>&1; done
true
""",
}


@pytest.mark.parametrize("language", LANGUAGES)
def test_host_files_daemon_and_executor_are_out_of_reach(daemon: Daemon, language: str) -> None:
    """Nothing of the host at any level but these documented exceptions: at landlock the
    container's own /etc/passwd and /etc/group (accounts, no password hashes: read-only for
    getpwuid & co.); at bwrap-compat every process's command line (the container's /proc
    is bound; the daemon's names no secret), never its environment."""
    targets = _targets(daemon)
    result = daemon.attack(READ_HOST_FILES[language], language, event=targets)
    assert result["status"] == "success", result["stderr"]
    shadow = _host_lines("/etc/shadow")
    passwd = _host_lines("/etc/passwd")
    assert shadow and passwd
    found = leaks(result, *shadow, *SECRETS, *([] if LEVEL == "landlock" else passwd))
    assert found == [], f"host data leaked: {found[:3]}"
    if LEVEL == "landlock":
        assert leaks(result, *passwd) == passwd, "the documented exception: the real /etc/passwd"
    if language == "python":
        value = result["return_value"]
        for key in (
            "/etc/shadow",
            "/etc/gshadow",
            "/root",
            "/home",
            targets["results_dir"],
            targets["log"],
            targets["source"],
            targets["venv"],
        ):
            assert value[key] in ("FileNotFoundError", "PermissionError"), (key, value[key])
        environ, cmdline = (value[f"/proc/{daemon.pid}/{name}"] for name in ("environ", "cmdline"))
        if LEVEL == "bwrap":
            # pid numbers are per namespace: absent or some sandbox process, never the daemon.
            assert "sandbox_executor" not in environ + cmdline
        elif LEVEL == "bwrap-compat":
            assert environ == "PermissionError" and "sandbox_executor.cli" in cmdline
        else:  # no /proc at all
            assert environ == cmdline == "PermissionError"
        assert value["sandbox_executor"] == value["fastapi"] == value["uvicorn"] == "ImportError"
        users = {line.split(":")[0] for line in value["/etc/passwd"].splitlines()}
        if LEVEL == "landlock":
            assert value["/etc/passwd"] == Path("/etc/passwd").read_text()
        else:  # the synthetic passwd names only the sandbox's accounts
            assert users <= {"root", "sandbox", "nobody"}
    if LEVEL != "bwrap-compat":
        assert "sandbox_executor.cli" not in result["stdout"] + str(result["return_value"])


HUNT_SECRETS = {
    "python": r"""
import os
NEEDLES = (b"sec-executor-token-", b"sec-internal-token-", b"EXECUTOR_API_TOKEN", b"INTERNAL_API_TOKEN")
SKIP = {"/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin", "/proc", "/sys"}

def grep(path, hits, limit=1 << 20):
    try:
        with open(path, "rb", buffering=0) as fh:
            if not os.path.isfile(path):
                return
            data = fh.read(limit)
    except OSError:
        return
    for needle in NEEDLES:
        at = data.find(needle)
        if at >= 0:
            hits.append([path, data[max(0, at - 20): at + 80].decode("utf-8", "replace")])

def listdir(path):
    try:
        return os.listdir(path)
    except OSError:  # no /proc (landlock), or a directory it may not list
        return []

def handler(event):
    hits, scanned, seen = [], 0, set()
    for pid in listdir("/proc"):
        if pid.isdigit() or pid in ("self", "thread-self"):
            for name in ("environ", "cmdline"):
                grep(f"/proc/{pid}/{name}", hits)
                scanned += 1
    # "/" first; where it cannot be listed (landlock), every place a sandbox may reach.
    roots = ["/", os.getcwd(), os.environ.get("TMPDIR", "/tmp"), "/tmp", "/dev/shm", "/etc",
             "/etc/ssl/certs", "/var", "/run", "/opt", "/srv", "/home", "/root"]
    for root in roots:
        for dirpath, dirs, files in os.walk(root):
            st = os.stat(dirpath)
            if (st.st_dev, st.st_ino) in seen:
                dirs[:] = []
                continue
            seen.add((st.st_dev, st.st_ino))
            dirs[:] = [d for d in dirs if os.path.join(dirpath, d) not in SKIP]
            for name in files:
                path = os.path.join(dirpath, name)
                if os.path.isfile(path):  # links too; never a FIFO (opening one blocks)
                    grep(path, hits)
                    scanned += 1
    for key, value in os.environ.items():
        if "TOKEN" in key or "token" in value:
            hits.append(["env", key + "=" + value])
    return {"hits": hits, "scanned": scanned}
""",
    "javascript": r"""
const fs = require('fs');
const needles = ['sec-executor-token-', 'sec-internal-token-', 'EXECUTOR_API_TOKEN', 'INTERNAL_API_TOKEN'];
exports.handler = async () => {
  const hits = [];
  const paths = [];
  let pids = [];
  try { pids = fs.readdirSync('/proc'); } catch (e) { /* no /proc (landlock) */ }
  for (const pid of pids) {
    if (/^\d+$/.test(pid)) paths.push(`/proc/${pid}/environ`, `/proc/${pid}/cmdline`);
  }
  const seen = new Set();
  const walk = (dir) => {
    let entries = [];
    try {
      const st = fs.statSync(dir);
      if (seen.has(`${st.dev}:${st.ino}`)) return;
      seen.add(`${st.dev}:${st.ino}`);
      entries = fs.readdirSync(dir, { withFileTypes: true });
    } catch (e) { return; }
    for (const e of entries) {
      const p = dir === '/' ? '/' + e.name : dir + '/' + e.name;
      if (['/usr', '/lib', '/lib64', '/bin', '/sbin', '/proc', '/sys'].includes(p)) continue;
      // bwrap's /dev entries are bind mounts over plain files: ask stat, not the dirent.
      let st; try { st = fs.statSync(p); } catch (x) { continue; }
      if (e.isDirectory()) walk(p); else if (st.isFile()) paths.push(p);
    }
  };
  // "/" first; where it cannot be listed (landlock), every place a sandbox may reach.
  for (const root of ['/', process.cwd(), process.env.TMPDIR || '/tmp', '/tmp', '/dev/shm', '/etc',
                      '/etc/ssl/certs', '/var', '/run', '/opt', '/srv', '/home', '/root']) walk(root);
  for (const p of paths) {
    let data = '';
    try { data = fs.readFileSync(p, 'latin1').slice(0, 1 << 20); } catch (e) { continue; }
    for (const n of needles) {
      const at = data.indexOf(n);
      if (at >= 0) hits.push([p, data.slice(at, at + 80)]);
    }
  }
  for (const [k, v] of Object.entries(process.env)) {
    if (k.includes('TOKEN') || v.includes('token')) hits.push(['env', k + '=' + v]);
  }
  return { hits, scanned: paths.length };
};
""",
    "shell": r"""
pat='sec-executor-token-\|sec-internal-token-\|EXECUTOR_API_TOKEN\|INTERNAL_API_TOKEN'
for f in /proc/[0-9]*/environ /proc/[0-9]*/cmdline; do
  tr '\0' '\n' < "$f" 2>/dev/null | grep -H --label="$f" "$pat"
done
for d in /* "$PWD" "$TMPDIR" /dev/shm /etc /etc/ssl/certs /tmp; do
  case "$d" in /usr|/lib|/lib32|/lib64|/libx32|/bin|/sbin|/proc|/sys) continue;; esac
  grep -rIs "$pat" "$d" 2>/dev/null | cut -c1-200
done
env | grep -i token
echo scanned
""",
}


@pytest.mark.parametrize("language", LANGUAGES)
def test_no_token_anywhere_in_the_sandbox(daemon: Daemon, language: str) -> None:
    result = daemon.attack(HUNT_SECRETS[language], language, timeout=10)
    assert result["status"] == "success", result["stderr"][-2000:]
    assert leaks(result) == []
    if language == "shell":
        assert result["stdout"].strip() == "scanned", result["stdout"][-2000:]
    else:
        value = result["return_value"]
        assert value["hits"] == [], value["hits"]
        assert value["scanned"] > 10  # it did look


FD_AND_ROOT_ESCAPES = r"""
import os, stat
def handler(event):
    out = {"fds": {}, "roots": {}, "escape": []}
    for fd in range(1024):  # not /proc/self/fd: there is no /proc at the landlock level
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            continue
        try:
            out["fds"][fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError as exc:
            out["fds"][fd] = "dir" if stat.S_ISDIR(mode) else type(exc).__name__
        # Any inherited directory descriptor could be walked upwards out of the sandbox.
        try:
            if stat.S_ISDIR(mode):
                up = os.open("../../../../..", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
                out["escape"].append([fd, sorted(os.listdir(up))])
        except OSError:
            pass
    for pid in ("self", "1"):
        for link in ("root", "cwd"):
            try:
                out["roots"][f"{pid}/{link}"] = [os.readlink(f"/proc/{pid}/{link}"),
                                                 sorted(os.listdir(f"/proc/{pid}/{link}/"))]
            except OSError as exc:
                out["roots"][f"{pid}/{link}"] = type(exc).__name__
    try:
        out["root_listing"] = sorted(os.listdir("/"))
    except OSError as exc:
        out["root_listing"] = type(exc).__name__
    try:
        os.chroot("/tmp")
        out["chroot"] = "ok"
    except OSError as exc:
        out["chroot"] = type(exc).__name__
    out["targets_visible"] = [p for p in event["paths"] if os.path.exists(p)]
    out["targets_listed"] = []
    for p in event["paths"]:
        try:
            os.listdir(p)
            out["targets_listed"].append(p)
        except OSError:
            pass
    return out
"""


def test_no_escape_through_proc_root_or_inherited_descriptors(daemon: Daemon) -> None:
    """Only pipes and /dev/null are inherited; no /proc link leads out. Documented weaker
    outcomes: at bwrap-compat /proc/1 is the container's init, whose root and cwd are
    refused (another user namespace); at landlock there is no /proc and "/" cannot be
    listed, but stat() is not a Landlock right: host paths' existence (not their
    contents) shows."""
    paths = [str(daemon.server.results_dir), str(REPO), str(Path(sys.prefix)), str(daemon.server.log_path)]
    result = daemon.attack(FD_AND_ROOT_ESCAPES, event={"paths": paths})
    assert result["status"] == "success", result["stderr"]
    value = result["return_value"]
    # Every descriptor is a pipe, /dev/null or the like: nothing that names a host path.
    for fd, target in value["fds"].items():
        harmless = target.startswith(("pipe:", "/dev/", "anon_inode:", "/proc/"))
        assert harmless or target in ("FileNotFoundError", "PermissionError"), (fd, target)
    assert value["chroot"] == "PermissionError"
    assert value["targets_listed"] == []
    if LEVEL == "landlock":
        assert value["root_listing"] == "PermissionError"
        cwd = value["roots"].pop("self/cwd")  # its own workspace
        assert cwd[0] == str(daemon.workspace), cwd
        assert set(value["roots"].values()) == {"PermissionError"}, value["roots"]
        assert value["escape"] == []
        assert value["targets_visible"] == paths  # the documented exception: stat()
        return
    sandbox_root = set(value["root_listing"])
    assert sandbox_root <= {
        "usr",
        "bin",
        "sbin",
        "lib",
        "lib32",
        "lib64",
        "libx32",
        "etc",
        "tmp",
        "workspace",
        "proc",
        "dev",
        "opt",
    }, sandbox_root
    # Walking up from any directory descriptor stops at the sandbox root.
    for _, listing in value["escape"]:
        assert set(listing) == sandbox_root
    for key, got in value["roots"].items():
        if LEVEL == "bwrap-compat" and key.startswith("1/"):
            assert got == "PermissionError", (key, got)
        else:
            assert got[0] in ("/", "/workspace"), (key, got)
    assert value["targets_visible"] == []


SHELL_ESCAPES = r"""
ls -la /proc/self/fd/ | awk 'NR>1 {print $NF}' | sort -u
echo "root: $(readlink /proc/self/root) $(readlink /proc/1/root)"
ls /proc/1/root/ | tr '\n' ' '; echo
cd /proc/self/root/../../.. && echo "up: $(pwd) $(ls | tr '\n' ' ')"
chroot /tmp /bin/true 2>/dev/null && echo "chroot worked"
true
"""


def test_no_escape_from_shell(daemon: Daemon) -> None:
    result = daemon.attack(SHELL_ESCAPES, "shell")
    out = result["stdout"]
    assert "chroot worked" not in out
    for host_path in (str(daemon.server.results_dir), str(REPO), "/root", "/home"):
        assert host_path not in out.replace("/root:", ""), (host_path, out)
    if LEVEL == "landlock":  # /proc/1 refused, "/" cannot be listed
        assert "root: / \n" in out, out
        up = next(ln for ln in out.splitlines() if ln.startswith("up: "))
        assert up.split() == ["up:", "/"], out
        return
    # bwrap-compat: /proc/1 is the container's init, out of reach (another user namespace).
    assert ("root: / " if LEVEL == "bwrap-compat" else "root: / /") in out, out
    up = next(ln for ln in out.splitlines() if ln.startswith("up: "))
    assert up.split()[1] == "/" and "workspace" in up


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_bytes()
            except OSError:
                continue
            if int(stat.rsplit(b")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def test_the_daemon_and_its_spawner_are_not_dumpable(daemon: Daemon) -> None:
    """Without a user namespace (landlock) user code runs as the daemon's uid: the daemon and
    the spawner are non-dumpable, so no process of that uid may read their environment
    (the tokens) or memory, or attach to them. Shown from outside any sandbox, as that uid."""
    if daemon.run_as is None:
        pytest.skip("the daemon runs as root here; the SECURITY_DAEMON_USER pass shows this")
    spawners = [
        p for p in _children(daemon.pid) if b"spawner_main" in Path(f"/proc/{p}/cmdline").read_bytes()
    ]
    assert spawners, "the daemon's spawner was not found"
    uid, gid = daemon.run_as
    for pid in (daemon.pid, *spawners):
        for name in ("environ", "mem", "maps"):
            probe = subprocess.run(
                ["cat", f"/proc/{pid}/{name}"], capture_output=True, user=uid, group=gid, extra_groups=[]
            )
            assert probe.returncode != 0 and b"Permission denied" in probe.stderr, (pid, name, probe)
    # The same uid's ordinary (dumpable) process is readable: the refusal is non-dumpability's.
    mine = subprocess.run(
        ["cat", "/proc/self/environ"], capture_output=True, user=uid, group=gid, extra_groups=[]
    )
    assert mine.returncode == 0


SYSV_IPC = r"""
import ctypes, os
def handler(event):
    libc = ctypes.CDLL(None, use_errno=True)
    shmid = libc.shmget(event["key"], 0, 0)
    return shmid if shmid >= 0 else os.strerror(ctypes.get_errno())
"""


def test_sysv_shared_memory_of_the_host(daemon: Daemon) -> None:
    """A SysV shared memory segment of the container (world-accessible): another IPC
    namespace under bwrap. landlock: the documented gap: no IPC namespace, so the sandbox
    finds it (SysV IPC and POSIX message queues are shared; the daemon uses none)."""
    libc = ctypes.CDLL(None, use_errno=True)
    key = int.from_bytes(os.urandom(3), "big") + 1
    shmid = libc.shmget(key, 4096, 0o1666)  # IPC_CREAT | rw for everyone
    assert shmid >= 0, os.strerror(ctypes.get_errno())
    try:
        got = daemon.attack(SYSV_IPC, event={"key": key})["return_value"]
        if LEVEL == "landlock":
            assert got == shmid
        else:
            assert got == "No such file or directory", got
    finally:
        libc.shmctl(shmid, 0, None)  # IPC_RMID
