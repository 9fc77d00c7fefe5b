"""Privilege: no root, no namespaces, no mounts, no tracing, no devices, no kernel, no writes
outside /tmp and /workspace, and no way to signal the daemon."""

from __future__ import annotations

import subprocess

import pytest

from sandbox_executor.bootstrap.confine import landlock_abi
from tests.security.helpers import LANGUAGES, LEVEL, Daemon

SETUID_BINARIES = r"""
import os, stat, subprocess, time
def handler(event):
    found, euids = [], {}
    for root in ("/usr/bin", "/usr/sbin", "/usr/lib", "/bin", "/sbin"):
        for dirpath, dirs, files in os.walk(root):
            for name in files:
                path = os.path.join(dirpath, name)
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode) and st.st_mode & stat.S_ISUID:
                    found.append(path)
    for path in sorted(set(found)):
        try:
            proc = subprocess.Popen([path], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
        except OSError as exc:
            euids[path] = type(exc).__name__
            continue
        time.sleep(0.02)
        try:
            uid_line = [l for l in open(f"/proc/{proc.pid}/status") if l.startswith("Uid:")][0]
            euids[path] = uid_line.split()[2]
        except (OSError, IndexError):
            euids[path] = "exited"
        proc.kill()
        proc.wait()
    tries = {}
    for argv in (["su", "-c", "id -u"], ["mount", "-t", "tmpfs", "none", "/tmp"],
                 ["newgrp", "root"], ["fusermount3", "-u", "/workspace"]):
        try:
            p = subprocess.run(argv, input=b"", capture_output=True, timeout=3)
            tries[argv[0]] = [p.returncode, p.stdout.decode(errors="replace")[-200:]]
        except (OSError, subprocess.TimeoutExpired) as exc:
            tries[argv[0]] = [type(exc).__name__, ""]
    return {"setuid": sorted(set(found)), "euids": euids, "tries": tries, "status": own_status()}

def own_status():
    try:
        return {l.split(":")[0]: l.split(":", 1)[1].strip() for l in open("/proc/self/status")
                if l.startswith(("Uid", "Gid", "CapEff", "CapPrm", "CapBnd", "NoNewPrivs"))}
    except OSError:  # no /proc (landlock): ask the kernel directly
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, self
        data = (ctypes.c_uint32 * 6)()  # {effective, permitted, inheritable} x 2
        assert libc.capget(header, data) == 0
        return {"Uid": " ".join(map(str, os.getresuid())),
                "NoNewPrivs": str(libc.prctl(39, 0, 0, 0, 0)),  # PR_GET_NO_NEW_PRIVS
                "CapEff": f"{data[3] << 32 | data[0]:016x}", "CapPrm": f"{data[4] << 32 | data[1]:016x}"}
"""


def test_setuid_binaries_give_no_privilege(daemon: Daemon) -> None:
    result = daemon.attack(SETUID_BINARIES, timeout=10)
    assert result["status"] == "success", result["stderr"][-2000:]
    value = result["return_value"]
    # The host's setuid binaries are visible (so the attack is real) and give nothing.
    assert value["setuid"], "no setuid binary found: the attack proves nothing"
    assert "0" not in value["euids"].values(), value["euids"]
    for name, (code, out) in value["tries"].items():
        assert code != 0 and out.strip() != "0", (name, code, out)
    status = value["status"]
    assert status["NoNewPrivs"] == "1"
    assert status["CapEff"] == status["CapPrm"] == "0000000000000000"
    assert "0" not in status["Uid"].split()


NAMESPACES_AND_MOUNTS = {
    "python": r"""
import ctypes, os, subprocess
libc = ctypes.CDLL(None, use_errno=True)
def err(rc):
    return "ok" if rc == 0 else os.strerror(ctypes.get_errno())
def handler(event):
    out = {}
    out["unshare_user"] = err(libc.unshare(0x10000000))
    out["unshare_mount"] = err(libc.unshare(0x00020000))
    out["mount_tmpfs"] = err(libc.mount(b"none", b"/tmp", b"tmpfs", 0, None))
    out["remount_root_rw"] = err(libc.mount(None, b"/", None, 0x20 | 0x1000, None))  # MS_REMOUNT|MS_BIND
    out["umount_workspace"] = err(libc.umount2(b"/workspace", 2))  # MNT_DETACH
    for argv in (["unshare", "-r", "id", "-u"], ["unshare", "-Urm", "true"],
                 ["mount", "--bind", "/tmp", "/workspace"]):
        p = subprocess.run(argv, capture_output=True, text=True)
        out[" ".join(argv)] = [p.returncode, p.stdout.strip()]
    return out
""",
    "javascript": r"""
const cp = require('child_process');
exports.handler = async () => {
  const out = {};
  for (const cmd of ['unshare -r id -u', 'unshare -Urm true', 'mount -t tmpfs none /tmp']) {
    const r = cp.spawnSync('sh', ['-c', cmd], { encoding: 'utf8' });
    out[cmd] = [r.status, r.stdout.trim()];
  }
  return out;
};
""",
    "shell": r"""
unshare -r id -u && echo "unshare worked"
unshare -Urm sh -c 'mount -t tmpfs none /usr && echo mounted' && echo "unshare -Urm worked"
mount -t tmpfs none /tmp && echo "mount worked"
umount -l /workspace && echo "umount worked"
true
""",
}


@pytest.mark.parametrize("language", LANGUAGES)
def test_unshare_and_mount_fail(daemon: Daemon, language: str) -> None:
    result = daemon.attack(NAMESPACES_AND_MOUNTS[language], language)
    if language == "python":
        value = result["return_value"]
        for key in ("unshare_user", "unshare_mount", "mount_tmpfs", "remount_root_rw", "umount_workspace"):
            assert value[key] == "Operation not permitted", (key, value[key])
        for key, got in value.items():
            if isinstance(got, list):
                assert got[0] != 0, (key, got)
    elif language == "javascript":
        for key, (code, out) in result["return_value"].items():
            assert code != 0 and out != "0", (key, code, out)
    else:
        assert "worked" not in result["stdout"] and "mounted" not in result["stdout"], result["stdout"]


PTRACE = {
    "python": r"""
import ctypes, os, subprocess, time
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.restype = ctypes.c_long
def handler(event):
    child = subprocess.Popen(["sleep", "5"])
    time.sleep(0.05)
    out = {}
    for name, req in (("attach", 16), ("seize", 0x4206)):
        rc = libc.ptrace(ctypes.c_long(req), ctypes.c_long(child.pid), None, None)
        out[name] = "ok" if rc == 0 else os.strerror(ctypes.get_errno())
    rc = libc.ptrace(ctypes.c_long(0), 0, None, None)
    out["traceme"] = "ok" if rc == 0 else os.strerror(ctypes.get_errno())
    argv = ["strace", "-f", "-p", str(child.pid), "-o", "/dev/null"]
    p = subprocess.run(argv, capture_output=True, timeout=3)
    out["strace"] = p.returncode
    child.kill()
    return out
""",
    "shell": r"""
sleep 5 & pid=$!
strace -p "$pid" -o /dev/null 2>&1 | head -2
gdb -batch -p "$pid" -ex "info registers rip" 2>&1 | grep -E "rip|ptrace" | head -3
kill "$pid"; true
""",
}


@pytest.mark.parametrize("language", ["python", "shell"])
def test_ptrace_fails(daemon: Daemon, language: str) -> None:
    result = daemon.attack(PTRACE[language], language)
    if language == "python":
        value = result["return_value"]
        assert value["attach"] == value["seize"] == value["traceme"] == "Operation not permitted", value
        assert value["strace"] != 0  # strace needs ptrace
    else:
        out = result["stdout"]
        assert "Operation not permitted" in out or "not found" in out, out
        assert "rip " not in out.replace("ptrace", ""), out


DEVICES_AND_KERNEL = r"""
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def handler(event):
    out = {}
    for path in ("/dev/mem", "/dev/kmem", "/dev/port", "/dev/kmsg", "/dev/vda", "/dev/sda",
                 "/dev/nvme0n1", "/dev/fuse", "/dev/net/tun", "/dev/kvm", "/dev/mapper/control",
                 "/dev/console", "/proc/kcore", "/proc/sysrq-trigger", "/proc/sys/kernel/modprobe",
                 "/proc/sys/kernel/core_pattern", "/sys/kernel/uevent_helper", "/proc/kallsyms"):
        try:
            fd = os.open(path, os.O_RDWR)
            os.close(fd)
            out[path] = "opened rw"
        except OSError as exc:
            out[path] = type(exc).__name__
    try:
        with open("/proc/kallsyms") as fh:
            addresses = {line.split()[0] for line in fh.read(1 << 16).splitlines()}
        out["kallsyms_nonzero"] = sorted(a for a in addresses if int(a, 16) != 0)[:3]
    except OSError as exc:  # no /proc (landlock)
        out["kallsyms_nonzero"] = type(exc).__name__
    try:
        os.mknod(os.environ["TMPDIR"] + "/mem", 0o600 | 0o020000, os.makedev(1, 1))
        out["mknod"] = "created"
    except OSError as exc:
        out["mknod"] = type(exc).__name__
    # init_module(NULL, 0, ""), finit_module(-1, "", 0), delete_module("ext4", 0)
    out["init_module"] = libc.syscall(175, None, 0, b"") == 0 or os.strerror(ctypes.get_errno())
    out["finit_module"] = libc.syscall(313, -1, b"", 0) == 0 or os.strerror(ctypes.get_errno())
    out["delete_module"] = libc.syscall(176, b"ext4", 0) == 0 or os.strerror(ctypes.get_errno())
    import subprocess
    for argv in (["insmod", "/lib/modules/x.ko"], ["modprobe", "dummy"]):
        try:
            out[argv[0]] = subprocess.run(argv, capture_output=True).returncode
        except OSError as exc:
            out[argv[0]] = type(exc).__name__
    return out
"""


def test_devices_and_kernel_modules_are_out_of_reach(daemon: Daemon) -> None:
    result = daemon.attack(DEVICES_AND_KERNEL)
    value = result["return_value"]
    for key, got in value.items():
        if key.startswith(("/dev", "/proc", "/sys")):
            assert got != "opened rw", (key, got)
    assert value["mknod"] == "PermissionError"
    for key in ("init_module", "finit_module", "delete_module"):
        assert value[key] == "Operation not permitted", (key, value[key])
    assert value["insmod"] != 0 and value["modprobe"] != 0
    # kptr_restrict: kernel addresses read as zeros without CAP_SYSLOG (landlock: no /proc).
    assert value["kallsyms_nonzero"] == ("PermissionError" if LEVEL == "landlock" else [])


WRITE_SYSTEM = {
    "python": r"""
import os
def handler(event):
    out = {}
    for path in ("/usr/bin/python3", "/usr/lib/evil", "/etc/passwd", "/etc/evil", "/evil",
                 "/bin/evil", "/opt/sandbox-venv/evil", "/proc/evil"):
        try:
            with open(path, "ab") as fh:
                fh.write(b"x")
            out[path] = "written"
        except OSError as exc:
            out[path] = type(exc).__name__
    try:
        os.chmod("/usr/bin/python3", 0o777)
        out["chmod"] = "ok"
    except OSError as exc:
        out["chmod"] = type(exc).__name__
    return out
""",
    "javascript": r"""
const fs = require('fs');
exports.handler = async () => {
  const out = {};
  for (const p of ['/usr/bin/node', '/usr/lib/evil', '/etc/passwd', '/etc/evil', '/evil']) {
    try { fs.appendFileSync(p, 'x'); out[p] = 'written'; } catch (e) { out[p] = e.code; }
  }
  return out;
};
""",
    "shell": r"""
for p in /usr/bin/bash /usr/lib/evil /etc/passwd /etc/evil /evil; do
  if (printf x >> "$p") 2>/dev/null; then echo "written $p"; else echo "refused $p"; fi
done
""",
}


@pytest.mark.parametrize("language", LANGUAGES)
def test_system_directories_are_read_only(daemon: Daemon, language: str) -> None:
    result = daemon.attack(WRITE_SYSTEM[language], language)
    text = result["stdout"] + str(result["return_value"])
    assert "written" not in text, text
    if language == "shell":
        assert result["stdout"].count("refused") == 5


KILL_EVERYTHING = {
    "python": r"""
import os, signal
def handler(event):
    out = {}
    for target in (event["daemon_pid"], -1):
        try:
            os.kill(target, signal.SIGKILL if target != -1 else signal.SIGTERM)
            out[str(target)] = "sent"
        except OSError as exc:
            out[str(target)] = type(exc).__name__
    return out
""",
    "javascript": r"""
exports.handler = async (event) => {
  try { process.kill(event.daemon_pid, 'SIGKILL'); return 'sent'; } catch (e) { return e.code; }
};
""",
    "shell": r"""
pid=$(sed 's/.*"daemon_pid": *\([0-9]*\).*/\1/' "$SANDBOX_EVENT_FILE")
kill -9 "$pid" 2>&1
kill -9 -1
echo "still here"
""",
}


@pytest.mark.parametrize("language", LANGUAGES)
def test_signals_cannot_reach_the_daemon(daemon: Daemon, language: str) -> None:
    # kill(-1) hits every process the caller may signal: inside a PID namespace only its own;
    # at the landlock level the seccomp filter refuses it, and Landlock (ABI >= 6) scopes
    # kill(pid) to the sandbox's own processes even when the daemon shares its uid.
    if LEVEL == "landlock" and landlock_abi() < 6 and daemon.run_as is not None:
        pytest.skip("Landlock ABI < 6 cannot scope signals: the bystander test shows the gap")
    result = daemon.attack(KILL_EVERYTHING[language], language, event={"daemon_pid": daemon.pid})
    assert daemon.server.process.poll() is None
    if language == "python":
        assert result["return_value"][str(daemon.pid)] in ("ProcessLookupError", "PermissionError")
    elif language == "javascript":
        assert result["return_value"] in ("ESRCH", "EPERM")


def test_signals_to_a_same_uid_process_outside_the_sandbox(daemon: Daemon) -> None:
    """A process of the sandbox's own uid outside it (what the daemon is at the landlock
    level when it runs unprivileged): another pid namespace (bwrap levels), Landlock's
    signal scope (ABI >= 6: EPERM). Below ABI 6 the documented gap: the signal gets through."""
    uid, gid = daemon.run_as or (65534, 65534)
    bystander = subprocess.Popen(["sleep", "60"], user=uid, group=gid, extra_groups=[])
    try:
        result = daemon.attack(KILL_EVERYTHING["python"], event={"daemon_pid": bystander.pid})
        got = result["return_value"][str(bystander.pid)]
        if LEVEL != "landlock":
            assert got == "ProcessLookupError" and bystander.poll() is None
        elif landlock_abi() >= 6:
            assert got == "PermissionError" and bystander.poll() is None
        else:
            assert got == "sent" and bystander.wait(5) == -9
        # -1: refused by seccomp (landlock), or no other process in its pid namespace
        assert result["return_value"]["-1"] in ("PermissionError", "ProcessLookupError")
    finally:
        bystander.kill()
        bystander.wait()


SHELL_DEVICES_AND_KERNEL = r"""
for d in /dev/mem /dev/kmem /dev/port /dev/vda /dev/sda /dev/kmsg /proc/kcore /proc/sysrq-trigger; do
  if (exec 3<>"$d") 2>/dev/null; then echo "opened $d"; fi
done
mknod "$TMPDIR/mem" c 1 1 2>/dev/null && echo "mknod worked"
echo c > /proc/sysrq-trigger 2>/dev/null && echo "sysrq worked"
insmod /nonexistent.ko 2>/dev/null; modprobe dummy 2>/dev/null && echo "modprobe worked"
echo done
"""


def test_devices_and_kernel_from_shell(daemon: Daemon) -> None:
    result = daemon.attack(SHELL_DEVICES_AND_KERNEL, "shell")
    assert result["stdout"] == "done\n", result["stdout"]
