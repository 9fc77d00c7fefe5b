"""The seccomp filter: it compiles, it refuses what docs/SECURITY.md says, and the
interpreters keep working under it. Every probe runs in a real sandbox of the level the
suite runs at (the landlock level's filter is the bwrap one plus its socket and kill rules)."""

from __future__ import annotations

import re
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from sandbox_executor import seccomp
from tests.security.helpers import LEVEL

pyseccomp = pytest.importorskip("pyseccomp")

EngineRun = Callable[..., Awaitable[Any]]

DOCS = Path(__file__).resolve().parents[2] / "docs" / "SECURITY.md"

# (name, args): arguments chosen so that, without the filter, the call gives an answer other
# than the filter's (success, EFAULT, EBADF, EINVAL...), which proves the filter answered.
PROBES: list[tuple[str, tuple[int, ...]]] = [
    ("ptrace", (0, 0, 0, 0)),  # PTRACE_TRACEME
    ("process_vm_readv", ("PID", 0, 0, 0, 0, 0)),  # type: ignore[list-item]
    ("process_vm_writev", ("PID", 0, 0, 0, 0, 0)),  # type: ignore[list-item]
    ("kcmp", ("PID", "PID", 0, 0, 0)),  # type: ignore[list-item]
    ("pidfd_getfd", (2**32 - 1, 0, 0)),
    ("keyctl", (0, 2**64 - 3, 0)),  # KEYCTL_GET_KEYRING_ID, session keyring
    ("add_key", (0, 0, 0, 0, 0)),
    ("request_key", (0, 0, 0, 0)),
    ("bpf", (0, 0, 0)),
    ("perf_event_open", (0, 0, 2**64 - 1, 2**64 - 1, 0)),
    ("userfaultfd", (1,)),  # UFFD_USER_MODE_ONLY
    ("io_uring_setup", (1, 0)),
    ("io_uring_enter", (2**32 - 1, 0, 0, 0, 0, 0)),
    ("io_uring_register", (2**32 - 1, 0, 0, 0)),
    ("mount", (0, 0, 0, 0, 0)),
    ("umount2", (0, 0)),
    ("pivot_root", (0, 0)),
    ("chroot", (0,)),
    ("open_tree", (2**32 - 1, 0, 0)),
    ("move_mount", (2**32 - 1, 0, 2**32 - 1, 0, 0)),
    ("fsopen", (0, 0)),
    ("fsmount", (2**32 - 1, 0, 0)),
    ("fspick", (2**32 - 1, 0, 0)),
    ("fsconfig", (2**32 - 1, 0, 0, 0, 0)),
    ("mount_setattr", (2**32 - 1, 0, 0, 0, 0)),
    ("unshare", (0,)),
    ("setns", (2**32 - 1, 0)),
    ("kexec_load", (0, 0, 0, 0)),
    ("init_module", (0, 0, 0)),
    ("finit_module", (2**32 - 1, 0, 0)),
    ("delete_module", (0, 0)),
    ("reboot", (0, 0, 0, 0)),
    ("swapon", (0, 0)),
    ("acct", (0,)),
    ("syslog", (10, 0, 0)),  # SYSLOG_ACTION_SIZE_BUFFER
    ("modify_ldt", (0, 0, 0)),
    ("iopl", (0,)),
    ("ioperm", (0, 0, 0)),
    ("quotactl", (0, 0, 0, 0)),
    ("open_by_handle_at", (2**32 - 1, 0, 0)),
    ("fanotify_init", (0, 0)),
    ("sethostname", (0, 0)),
    ("clock_settime", (0, 0)),
    ("vhangup", ()),
    ("clone3", (0, 0)),
    ("personality", (8,)),  # PER_LINUX32
    ("personality", (0x0040000,)),  # ADDR_NO_RANDOMIZE
    ("personality", (0xFFFFFFFE,)),
]
# Calls the filter must leave alone (same answer as without it).
ALLOWED: list[tuple[str, tuple[int, ...]]] = [
    ("personality", (0,)),
    ("personality", (0xFFFFFFFF,)),
    ("getpid", ()),
    ("name_to_handle_at", (2**32 - 1, 0, 0, 0, 0)),
]
CLONE_FLAGS = {name: value for name, value in seccomp.CLONE_NAMESPACE_FLAGS.items()}

PROBE_CODE = r'''
import ctypes, os, subprocess, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

def call(nr, args):
    args = [os.getpid() if a == "PID" else a for a in args]
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_ulong(a) for a in args])
    return "ok" if r >= 0 else errno_name(ctypes.get_errno())

def isolated(nr, args):
    # Each call runs in a forked child: without the filter some of them succeed and
    # change the caller (PTRACE_TRACEME, personality...).
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(w, call(nr, args).encode())
        os._exit(0)
    os.close(w)
    answer = os.read(r, 100).decode()
    os.close(r)
    os.waitpid(pid, 0)
    return answer or "died"

def errno_name(n):
    import errno
    return errno.errorcode.get(n, str(n))

CLONE_CHILD = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
# clone(flags | SIGCHLD, stack=0): a fork; the child leaves at once.
r = libc.syscall(ctypes.c_long(56), ctypes.c_ulong(int(sys.argv[1]) | 17), *[ctypes.c_ulong(0)] * 4)
if r == 0:
    os._exit(0)
if r > 0:
    os.waitpid(r, 0)
    print("ok")
else:
    import errno
    print(errno.errorcode.get(ctypes.get_errno()))
"""

def handler(event):
    out = {"probes": [], "clone": {}}
    for name, nr, args in event["probes"]:
        out["probes"].append([name, args, isolated(nr, args)])
    for name, flag in event["clone"].items():
        argv = [sys.executable, "-c", CLONE_CHILD, str(flag)]
        proc = subprocess.run(argv, capture_output=True, text=True)
        out["clone"][name] = proc.stdout.strip() or proc.stderr.strip()[-200:]
    out["plain_clone"] = subprocess.run(
        [sys.executable, "-c", CLONE_CHILD, "0"], capture_output=True, text=True).stdout.strip()
    return out
'''


def _probe_event(probes: list[tuple[str, tuple[int, ...]]]) -> dict[str, object]:
    rows = [
        [name, int(pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name)), list(args)]
        for name, args in probes
    ]
    return {"probes": rows, "clone": CLONE_FLAGS}


def test_program_compiles_to_bpf() -> None:
    program = seccomp.build_program()
    assert len(program) % 8 == 0
    count = len(program) // 8
    assert 10 < count < 4096  # the kernel's BPF_MAXINSNS
    # First instructions: load the arch word, compare it with the native arch.
    code, _, _, k = struct.unpack("<HBBI", program[:8])
    assert (code, k) == (0x20, 4)  # BPF_LD|BPF_W|BPF_ABS, offsetof(seccomp_data, arch)
    _, _, _, arch = struct.unpack("<HBBI", program[8:16])
    assert arch == pyseccomp.system_arch()
    # The last instruction is the bad-arch action: SECCOMP_RET_KILL_PROCESS.
    code, _, _, k = struct.unpack("<HBBI", program[-8:])
    assert (code, k) == (0x06, 0x80000000)
    assert seccomp.build_program() == program


def test_every_rule_name_resolves() -> None:
    for name in seccomp.DENY_EPERM:
        assert pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name) != -1, name


def test_docs_give_a_reason_for_every_rule() -> None:
    text = DOCS.read_text(encoding="utf-8")
    for name in seccomp.ALL_RULE_NAMES:
        assert re.search(rf"`{re.escape(name)}`", text), f"{name} is not documented in {DOCS}"


async def test_filter_refuses_the_denied_calls(run_engine: EngineRun) -> None:
    event = _probe_event(PROBES + ALLOWED)
    filtered = await run_engine(PROBE_CODE, event=event, timeout=20)
    assert filtered.status == "success", filtered.stderr
    unfiltered = await run_engine(PROBE_CODE, event=event, timeout=20, seccomp=False)
    assert unfiltered.status == "success", unfiltered.stderr
    with_f = filtered.return_value
    without = unfiltered.return_value
    denied = len(PROBES)
    pairs = list(zip(with_f["probes"], without["probes"], strict=True))
    for (name, args, got), _ in pairs[:denied]:
        expected = "ENOSYS" if name == "clone3" else "EPERM"
        assert got == expected, f"{name}{tuple(args)} answered {got}, expected {expected}"
    for (name, args, got), (_, _, baseline) in pairs[denied:]:
        assert got == baseline, f"{name}{tuple(args)} is changed by the filter: {got} vs {baseline}"
    # The control run shows the filter, not the namespaces, gave most of these answers.
    changed = [row[0] for row, base in pairs[:denied] if row[2] != base[2]]
    must_change = (
        "ptrace",
        "unshare",
        "keyctl",
        "io_uring_setup",
        "userfaultfd",
        "mount",
        "clone3",
        "personality",
    )
    for name in must_change:
        assert name in changed, f"{name}: same answer without the filter ({changed})"
    for flag, got in with_f["clone"].items():
        assert got == "EPERM", f"clone({flag}) answered {got}"
    assert with_f["plain_clone"] == "ok"
    if LEVEL == "bwrap":
        # Without the filter, bwrap's --disable-userns answers a new user namespace with ENOSPC.
        assert without["clone"]["CLONE_NEWUSER"] != "EPERM"


FOREIGN_ARCH_CODE = r'''
import subprocess, sys
X32 = "import ctypes; ctypes.CDLL(None).syscall(0x40000000 + 39); print('alive')"
INT80 = """
import ctypes, mmap
code = b"\\xb8\\x14\\x00\\x00\\x00\\xcd\\x80\\xc3"  # mov eax, 20 (i386 getpid); int 0x80; ret
buf = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
buf.write(code)
addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
ctypes.CFUNCTYPE(ctypes.c_long)(addr)()
print('alive')
"""
def handler(event):
    out = {}
    for name, src in (("x32", X32), ("int80", INT80)):
        proc = subprocess.run([sys.executable, "-c", src], capture_output=True, text=True)
        out[name] = [proc.returncode, proc.stdout.strip()]
    return out
'''


@pytest.mark.skipif(
    pyseccomp.system_arch() != pyseccomp.Arch.X86_64, reason="x32 and int 0x80 exist on x86_64 only"
)
async def test_foreign_architectures_are_killed(run_engine: EngineRun) -> None:
    filtered = await run_engine(FOREIGN_ARCH_CODE, timeout=10)
    assert filtered.status == "success", filtered.stderr
    # SIGSYS: SECCOMP_RET_KILL_PROCESS.
    assert filtered.return_value == {"x32": [-31, ""], "int80": [-31, ""]}
    unfiltered = await run_engine(FOREIGN_ARCH_CODE, timeout=10, seccomp=False)
    assert unfiltered.return_value == {"x32": [0, "alive"], "int80": [0, "alive"]}


PYTHON_WORKLOAD = r"""
import asyncio, concurrent.futures, ctypes, multiprocessing, subprocess, threading

def status(path):
    try:
        return {l.split(":")[0]: l.split(":")[1].strip() for l in open(path)
                if l.startswith(("Seccomp:", "NoNewPrivs:"))}
    except OSError:  # no /proc (landlock): ask the kernel (PR_GET_SECCOMP, PR_GET_NO_NEW_PRIVS)
        if path != "/proc/self/status":
            return None
        prctl = ctypes.CDLL(None).prctl
        return {"Seccomp": str(prctl(21, 0, 0, 0, 0)), "NoNewPrivs": str(prctl(39, 0, 0, 0, 0))}

def handler(event):
    results = []
    threads = [threading.Thread(target=results.append, args=(i,)) for i in range(8)]
    for t in threads: t.start()
    for t in threads: t.join()
    with concurrent.futures.ThreadPoolExecutor(4) as ex:
        pooled = sum(ex.map(abs, range(-9, 1)))
    out = subprocess.run("echo piped | tr a-z A-Z", shell=True, capture_output=True,
                         text=True).stdout
    async def main():
        proc = await asyncio.create_subprocess_exec("cat", stdin=asyncio.subprocess.PIPE,
                                                    stdout=asyncio.subprocess.PIPE)
        data, _ = await proc.communicate(b"async")
        await asyncio.sleep(0.01)
        return data.decode()
    asynced = asyncio.run(main())
    # Builtins: functions defined in the handler do not pickle by reference (the bootstrap
    # runs user code outside sys.modules["__main__"]), which is not what this test is about.
    with multiprocessing.Pool(2) as pool:
        mp = pool.map(abs, [-1, -2, -3])
    with concurrent.futures.ProcessPoolExecutor(2) as ex:
        ppe = list(ex.map(abs, [-4, -5]))
    count = "import ctypes; print(int(ctypes.CDLL(None).prctl(21, 0, 0, 0, 0) == 2))"  # PR_GET_SECCOMP
    child = subprocess.run(["python3", "-c", count], capture_output=True, text=True).stdout.strip()
    return {"threads": sorted(results), "pooled": pooled, "out": out, "asynced": asynced, "mp": mp,
            "ppe": ppe, "child_filtered": child, "self": status("/proc/self/status"),
            "init": status("/proc/1/status")}
"""

NODE_WORKLOAD = r"""
const { Worker } = require('worker_threads');
const cp = require('child_process');
const fs = require('fs');
exports.handler = async () => {
  const worker = await new Promise((resolve, reject) => {
    const w = new Worker('require("worker_threads").parentPort.postMessage(6 * 7)', { eval: true });
    w.on('message', resolve); w.on('error', reject);
  });
  const execd = cp.execSync('echo child | tr a-z A-Z').toString().trim();
  const code = await new Promise((resolve) => cp.spawn('sh', ['-c', 'exit 3']).on('exit', resolve));
  const tmp = require('os').tmpdir();
  fs.writeFileSync(`${tmp}/child.js`, 'process.send(7); process.disconnect();');
  const forked = await new Promise((resolve, reject) => {
    const c = cp.fork(`${tmp}/child.js`);
    c.on('message', resolve); c.on('error', reject);
  });
  await fs.promises.writeFile(`${tmp}/node-io`, 'data');
  const back = await fs.promises.readFile(`${tmp}/node-io`, 'utf8');
  const timers = await new Promise((resolve) => setTimeout(() => resolve('tick'), 5));
  const prctl = "import ctypes; print(ctypes.CDLL(None).prctl(21, 0, 0, 0, 0))";  // PR_GET_SECCOMP
  const seccomp = cp.execFileSync('python3', ['-c', prctl]).toString().trim() === '2';
  return { worker, execd, code, forked, back, timers, seccomp };
};
"""

SHELL_WORKLOAD = r"""
set -eu
echo "a b c" | tr a-z A-Z | sort
( cd "$TMPDIR" && echo "subshell $(pwd)" | sed "s|$TMPDIR|TMPDIR|" )
sleep 0.05 & wait $!; echo "background done"
echo "lines $(seq 1 100 | wc -l)"
while read -r n; do total=$(( ${total:-0} + n )); done < <(seq 1 10); echo "sum $total"
coproc cat; echo hi >&"${COPROC[1]}"; exec {COPROC[1]}>&-
read -r line <&"${COPROC[0]}"; echo "coproc $line"
python3 -c 'import ctypes; print(ctypes.CDLL(None).prctl(21, 0, 0, 0, 0))'  # PR_GET_SECCOMP
"""


async def test_python_keeps_working(run_engine: EngineRun) -> None:
    result = await run_engine(PYTHON_WORKLOAD, timeout=20)
    assert result.status == "success", result.stderr
    value = result.return_value
    assert value["threads"] == list(range(8))
    assert value["pooled"] == 45
    assert value["out"] == "PIPED\n"
    assert value["asynced"] == "async"
    assert value["mp"] == [1, 2, 3]
    assert value["ppe"] == [4, 5]
    # The filter binds the sandbox's init and every descendant, with no_new_privs.
    assert value["child_filtered"] == "1"
    assert value["self"] == {"Seccomp": "2", "NoNewPrivs": "1"}
    if LEVEL == "bwrap":  # bwrap-compat: /proc/1 is the container's; landlock: no /proc
        assert value["init"]["Seccomp"] == "2"


async def test_node_keeps_working(run_engine: EngineRun) -> None:
    result = await run_engine(NODE_WORKLOAD, "javascript", timeout=20)
    assert result.status == "success", result.stderr
    assert result.return_value == {
        "worker": 42,
        "execd": "CHILD",
        "code": 3,
        "forked": 7,
        "back": "data",
        "timers": "tick",
        "seccomp": True,
    }


async def test_bash_keeps_working(run_engine: EngineRun) -> None:
    result = await run_engine(SHELL_WORKLOAD, "shell", timeout=20)
    assert result.status == "success", result.stderr
    assert result.stdout.splitlines() == [
        "A B C",
        "subshell TMPDIR",
        "background done",
        "lines 100",
        "sum 55",
        "coproc hi",
        "2",
    ]
