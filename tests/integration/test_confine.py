"""The landlock level's building blocks against the real kernel: Landlock, the landlock
seccomp filter and the per-sandbox supervisor, with real python, node and bash.

Each sandbox is started by tests/support/confine_driver.py, a stand-in for the spawner run
exactly as the spawner runs (``/usr/bin/python3 -I -S``, stdlib only): it forks a
supervisor whose child confines itself and execs the interpreter. Run as root, the
supervisor switches to nobody (as the spawner of a root daemon does) and the "daemon-like"
outsider runs as nobody too: the same uid, as the daemon and its sandboxes share uid 1000
in a container. The files the sandbox must not reach are world-readable, so each refusal
below comes from Landlock or seccomp, not from file permissions.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sandbox_executor import seccomp
from sandbox_executor.bootstrap import confine

REPO = Path(__file__).resolve().parents[2]
BOOTSTRAP = REPO / "src" / "sandbox_executor" / "bootstrap"
DRIVER = REPO / "tests" / "support" / "confine_driver.py"
PY, NODE, BASH = "/usr/bin/python3", "/usr/bin/node", "/bin/bash"
ABI = confine.landlock_abi()
ROOT = os.geteuid() == 0
NOBODY = 65534

pytestmark = pytest.mark.skipif(ABI == 0, reason="no Landlock in this kernel (or refused by seccomp)")


@dataclass
class Run:
    stdout: str
    stderr: str
    status: int | None  # the supervisor's wait status, seen by the driver
    report: dict[str, Any] | None


class Sandbox:
    """A workspace, a private temp dir, a file outside both; starts confined programs."""

    def __init__(self, root: Path, program: Path) -> None:
        self.workspace = root / "workspace"
        self.tmp = root / "private-tmp"
        self.outside = root / "outside"
        for d in (self.workspace, self.tmp, self.outside):
            d.mkdir()
            if ROOT:
                os.chown(d, NOBODY, NOBODY)
        (self.outside / "secret.txt").write_text("host secret\n")
        self.program = program
        self.proc = False
        self.landlock = True
        self.connect_tcp: list[int] = []
        self.filtered = True

    def spec(self, argv: list[str]) -> str:
        policy = confine.sandbox_policy(
            str(self.workspace), str(self.tmp), proc=self.proc, connect_tcp=self.connect_tcp
        )
        env = {"PATH": "/usr/bin:/bin", "TMPDIR": str(self.tmp), "HOME": str(self.tmp), "LANG": "C.UTF-8"}
        return json.dumps(
            {
                "argv": argv,
                "env": env,
                "cwd": str(self.workspace),
                "bootstrap": str(BOOTSTRAP),
                "policy": dataclasses.asdict(policy) if self.landlock else None,
                "seccomp": str(self.program) if self.filtered else None,
                "oom_score_adj": 800,
                "uid": NOBODY if ROOT else None,
            }
        )

    def start(self, argv: list[str]) -> tuple[subprocess.Popen[str], int]:
        """Start without waiting; the driver and the supervisor's pid."""
        read, write = os.pipe()
        proc = subprocess.Popen(
            [PY, "-I", "-S", str(DRIVER), self.spec(argv), str(write)],
            pass_fds=[write],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        os.close(write)
        self._control = os.fdopen(read, "r")
        first = json.loads(self._control.readline())
        return proc, int(first["supervisor"])

    def finish(self, proc: subprocess.Popen[str], timeout: float = 60) -> Run:
        out, err = proc.communicate(timeout=timeout)
        line = self._control.readline()
        self._control.close()
        last = json.loads(line) if line else {}
        return Run(out, err, last.get("status"), last.get("report"))

    def run(self, argv: list[str], timeout: float = 60) -> Run:
        proc, _ = self.start(argv)
        return self.finish(proc, timeout)

    def python(self, code: str) -> Any:
        """Run ``code`` confined from a file in the workspace; it prints one JSON document last."""
        script = self.workspace / "main.py"
        script.write_text(textwrap.dedent(code))
        run = self.run([PY, "-I", str(script)])
        assert run.status == 0, run.stderr
        return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bpf") / "landlock.bpf"
    path.write_bytes(seccomp.build_landlock_program())
    return path


@pytest.fixture
def box(program: Path) -> Iterator[Sandbox]:
    # Not under pytest's tmp_path: its parents are 0700 root, closed to nobody.
    root = Path(tempfile.mkdtemp(prefix="confine-"))
    root.chmod(0o755)
    yield Sandbox(root, program)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def outsider() -> Iterator[subprocess.Popen[bytes]]:
    """A daemon-like process outside every domain, same uid, dumpable, holding a token."""
    env = {"PATH": "/usr/bin:/bin", "INTERNAL_API_TOKEN": "tok-outsider-secret"}
    ids: dict[str, Any] = {"user": NOBODY, "group": NOBODY, "extra_groups": []} if ROOT else {}
    proc = subprocess.Popen(["/bin/sleep", "300"], env=env, **ids)
    yield proc
    proc.kill()
    proc.wait()


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in (b"Z", b"X")


def wait_gone(pids: list[int], timeout: float = 10) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [p for p in pids if alive(p)]
        if not left:
            return []
        time.sleep(0.02)
    return [p for p in pids if alive(p)]


def test_abi_and_errata_are_probed() -> None:
    assert ABI >= 1
    assert confine.landlock_errata() >= 0
    if ABI >= 6:
        assert confine.plan(confine.Policy(), ABI).scope == 3


def test_files_outside_the_rules_are_out_of_reach(box: Sandbox) -> None:
    got = box.python(
        f"""
        import json, os
        out = {{}}
        for name, op in {{
            "read_secret": lambda: open({str(box.outside / "secret.txt")!r}).read(),
            "list_outside": lambda: os.listdir({str(box.outside)!r}),
            "write_outside": lambda: open({str(box.outside / "new")!r}, "w"),
            "etc_hostname": lambda: open("/etc/hostname").read(),
            "write_usr": lambda: open("/usr/evil", "w"),
            "list_root": lambda: os.listdir("/"),
            "write_workspace": lambda: open("out.txt", "w").write("w"),
            "write_tmpdir": lambda: open(os.environ["TMPDIR"] + "/t", "w").write("t"),
            "mkdir_rename": lambda: (os.mkdir("d"), os.rename("out.txt", "d/moved.txt")),
        }}.items():
            try:
                op()
                out[name] = "ok"
            except OSError as exc:
                out[name] = exc.errno
        print(json.dumps(out))
        """
    )
    denied = ("read_secret", "list_outside", "write_outside", "etc_hostname", "write_usr", "list_root")
    assert {k: got[k] for k in denied} == dict.fromkeys(denied, errno.EACCES)
    assert got["write_workspace"] == got["write_tmpdir"] == got["mkdir_rename"] == "ok"
    assert (box.workspace / "d" / "moved.txt").read_text() == "w"
    assert not (box.outside / "new").exists()


PROC_PROBE = """
import json, os
out = {}
for name, op in (("environ", open), ("maps", open), ("mem", open), ("cmdline", open),
                 ("root/", os.listdir), ("cwd/", os.listdir), ("fd/0", os.readlink)):
    try:
        got = op("/proc/%d/" % PID + name)
        out[name] = "ok" if op is not open else got.read(64) and "ok"
    except OSError as exc:
        out[name] = exc.errno
try:
    out["self_status"] = open("/proc/self/status").read().startswith("Name:") and "ok"
except OSError as exc:
    out["self_status"] = exc.errno
print(json.dumps(out))
"""


@pytest.mark.parametrize("proc", [False, True], ids=["proc-denied", "proc-readable"])
def test_another_process_environ_and_root_are_out_of_reach(
    box: Sandbox, outsider: subprocess.Popen[bytes], proc: bool
) -> None:
    """With /proc readable, Landlock's ptrace scoping still hides the sensitive files."""
    code = PROC_PROBE.replace("PID", str(outsider.pid))
    box.proc = proc
    got = box.python(code)
    sensitive = ("environ", "maps", "mem", "root/", "cwd/", "fd/0")
    assert {k: got[k] for k in sensitive} == dict.fromkeys(sensitive, errno.EACCES), got
    # Only the harmless files are readable, and only when /proc is granted.
    assert got["cmdline"] == got["self_status"] == ("ok" if proc else errno.EACCES)
    # The control: without Landlock the same uid reads it all (so the test can fail).
    box.landlock = False
    assert box.python(code)["environ"] == "ok"


def test_tcp_to_a_loopback_listener(box: Sandbox) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        code = f"""
            import json, socket
            out = {{}}
            for name, family in (("inet", socket.AF_INET), ("inet6", socket.AF_INET6),
                                 ("netlink", socket.AF_NETLINK), ("packet", socket.AF_PACKET)):
                try:
                    socket.socket(family, socket.SOCK_DGRAM if name != "inet" else socket.SOCK_STREAM).close()
                    out[name] = "ok"
                except OSError as exc:
                    out[name] = exc.errno
            try:
                socket.create_connection(("127.0.0.1", {port}), timeout=5).close()
                out["connect"] = "ok"
            except OSError as exc:
                out["connect"] = exc.errno
            try:
                socket.socket().bind(("127.0.0.1", 0))
                out["bind"] = "ok"
            except OSError as exc:
                out["bind"] = exc.errno
            a, b = socket.socketpair()
            out["unix"] = "ok"
            print(json.dumps(out))
            """
        # The landlock level: seccomp refuses every family but AF_UNIX.
        filtered = box.python(code)
        assert filtered == {
            "inet": errno.EPERM,
            "inet6": errno.EPERM,
            "netlink": errno.EPERM,
            "packet": errno.EPERM,
            "connect": errno.EPERM,
            "bind": errno.EPERM,
            "unix": "ok",
        }
        if ABI < 4:
            return
        # Landlock alone (no seccomp): TCP connect and bind are refused...
        box.filtered = False
        landlock_only = box.python(code)
        assert landlock_only["inet"] == "ok"
        assert landlock_only["connect"] == landlock_only["bind"] == errno.EACCES
        # ...except to a port the policy allows (an egress proxy, say).
        box.connect_tcp = [port]
        assert box.python(code)["connect"] == "ok"


@pytest.mark.skipif(ABI < 6, reason="signal and abstract-socket scoping need Landlock ABI 6")
def test_signals_and_abstract_sockets_stay_inside_the_domain(
    box: Sandbox, outsider: subprocess.Popen[bytes]
) -> None:
    with socket.socket(socket.AF_UNIX) as listener:
        name = f"\0confine-test-{os.getpid()}"
        listener.bind(name)
        listener.listen()
        got = box.python(
            f"""
            import json, os, signal, socket, subprocess
            out = {{}}
            targets = (("kill", {outsider.pid}), ("kill_all", -1))
            for name, args in ((name, (pid, signal.SIGKILL)) for name, pid in targets):
                try:
                    os.kill(*args)
                    out[name] = "ok"
                except OSError as exc:
                    out[name] = exc.errno
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect({name!r})
                out["abstract"] = "ok"
            except OSError as exc:
                out["abstract"] = exc.errno
            # Inside the domain, signals work as usual.
            child = subprocess.Popen(["sleep", "30"])
            child.kill()
            out["own_child"] = child.wait()
            print(json.dumps(out))
            """
        )
    assert got == {"kill": errno.EPERM, "kill_all": errno.EPERM, "abstract": errno.EPERM, "own_child": -9}
    assert outsider.poll() is None


def test_ptrace_is_refused(box: Sandbox, outsider: subprocess.Popen[bytes]) -> None:
    box.filtered = False  # Landlock alone: no tracing out of the domain
    code = f"""
        import ctypes, json
        libc = ctypes.CDLL(None, use_errno=True)
        rc = libc.ptrace(16, {outsider.pid}, None, None)  # PTRACE_ATTACH
        print(json.dumps([rc, ctypes.get_errno()]))
        """
    assert box.python(code) == [-1, errno.EPERM]
    box.filtered = True
    assert box.python(code) == [-1, errno.EPERM]


def test_python_multiprocessing_and_subprocess_work(box: Sandbox) -> None:
    got = box.python(
        """
        import concurrent.futures, json, multiprocessing, subprocess, tempfile
        def square(x):
            return x * x
        if __name__ == "__main__":
            out = {"pool": multiprocessing.get_context("fork").Pool(2).map(square, [1, 2, 3])}
            out["spawn"] = multiprocessing.get_context("spawn").Pool(1).map(square, [4])
            with concurrent.futures.ProcessPoolExecutor(2) as ex:
                out["futures"] = list(ex.map(square, [5]))
            out["lock"] = bool(multiprocessing.Lock())
            pipe = subprocess.run("echo hi | tr a-z A-Z", shell=True, capture_output=True, text=True)
            out["pipe"] = pipe.stdout
            out["tmp"] = bool(tempfile.mkstemp())
            print(json.dumps(out))
        """
    )
    assert got == {
        "pool": [1, 4, 9],
        "spawn": [16],
        "futures": [25],
        "lock": True,
        "pipe": "HI\n",
        "tmp": True,
    }


def test_node_handler_and_bash_work(box: Sandbox) -> None:
    (box.workspace / "handler.js").write_text(
        textwrap.dedent(
            """
            exports.handler = async (event) => {
              const cp = require('child_process'), fs = require('fs'), os = require('os');
              fs.writeFileSync(os.tmpdir() + '/n.txt', 'n');
              fs.writeFileSync('from-node.txt', 'w');
              const { Worker } = require('worker_threads');
              const worker = await new Promise((ok) => new Worker(
                'require("worker_threads").parentPort.postMessage(6 * 7)', { eval: true }).on('message', ok));
              return { echo: event.x, exec: cp.execSync('echo hi | tr a-z A-Z').toString().trim(), worker };
            };
            """
        )
    )
    main = "require('./handler.js').handler({x: 1}).then((r) => console.log(JSON.stringify(r)))"
    run = box.run([NODE, "-e", main])
    assert run.status == 0, run.stderr
    assert json.loads(run.stdout) == {"echo": 1, "exec": "HI", "worker": 42}
    assert (box.workspace / "from-node.txt").read_text() == "w"
    script = 'echo "$(echo hi | tr a-z A-Z) $(cat <(echo procsub)) $( (echo sub) )" > out; cat out'
    script += '; echo x > "$TMPDIR/b"'
    run = box.run([BASH, "-c", script])
    assert (run.status, run.stdout) == (0, "HI procsub sub\n"), run.stderr
    assert (box.tmp / "b").read_text() == "x\n"


# A python program that leaves a setsid'd, double-forked sleeper behind and says its pid.
LEAVE_A_SLEEPER = textwrap.dedent(
    """
    import os, sys, time
    r, w = os.pipe()
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.write(w, str(os.getpid()).encode())
            os.execv("/bin/sleep", ["sleep", "300"])
        os._exit(0)
    os.wait()
    print(os.read(r, 32).decode(), os.getpid(), flush=True)
    if sys.argv[1] == "stay":
        time.sleep(300)
    """
)


def _sleeper(box: Sandbox, mode: str) -> tuple[subprocess.Popen[str], int, int, int]:
    proc, supervisor = box.start([PY, "-c", LEAVE_A_SLEEPER, mode])
    assert proc.stdout is not None
    sleeper, interpreter = map(int, proc.stdout.readline().split())
    return proc, supervisor, sleeper, interpreter


def test_stopping_the_supervisor_kills_a_setsid_grandchild(box: Sandbox) -> None:
    proc, supervisor, sleeper, interpreter = _sleeper(box, "stay")
    assert alive(sleeper) and alive(interpreter)
    assert Path(f"/proc/{interpreter}/oom_score_adj").read_text().strip() == "800"
    assert Path(f"/proc/{sleeper}/status").read_text().count("NoNewPrivs:\t1") == 1
    os.kill(supervisor, signal.SIGTERM)
    run = box.finish(proc)
    assert wait_gone([sleeper, interpreter]) == []
    # The supervisor dies the way the interpreter did: SIGKILL, as a timeout kill today.
    assert run.status is not None and os.WIFSIGNALED(run.status)
    assert os.WTERMSIG(run.status) == signal.SIGKILL


def test_leftovers_die_when_the_interpreter_exits(box: Sandbox) -> None:
    proc, _, sleeper, _ = _sleeper(box, "exit")
    run = box.finish(proc)
    assert run.status == 0 and run.report is not None and run.report["status"] == 0
    assert wait_gone([sleeper]) == []


def test_a_killed_spawner_takes_the_sandbox_with_it(box: Sandbox) -> None:
    proc, supervisor, sleeper, interpreter = _sleeper(box, "stay")
    proc.kill()  # SIGKILL the spawner stand-in
    proc.communicate(timeout=30)
    assert wait_gone([supervisor, interpreter, sleeper]) == []


def _storm_members(box: Sandbox) -> list[int]:
    """Live processes whose environment names this sandbox's private temp dir."""
    mine = []
    for name in os.listdir("/proc"):
        try:
            if name.isdigit() and str(box.tmp).encode() in Path(f"/proc/{name}/environ").read_bytes():
                mine.append(int(name))
        except OSError:
            pass
    return [pid for pid in mine if alive(pid)]


def test_a_fork_storm_is_killed_to_the_last_process(box: Sandbox) -> None:
    storm = "echo $$; for i in $(seq 400); do (setsid sleep 300 &); done; sleep 300"
    proc, supervisor = box.start([BASH, "-c", storm])
    assert proc.stdout is not None
    interpreter = int(proc.stdout.readline())
    time.sleep(0.3)  # mid-storm
    assert len(_storm_members(box)) > 5
    os.kill(supervisor, signal.SIGTERM)
    box.finish(proc)
    assert wait_gone([interpreter]) == []
    assert _storm_members(box) == []


def test_the_report_carries_the_whole_tree_usage(box: Sandbox) -> None:
    burn = textwrap.dedent(
        """
        import os, time
        if os.fork() == 0:
            t = time.process_time()
            while time.process_time() - t < 0.3:
                pass
            os._exit(0)
        os.wait()
        """
    )
    run = box.run([PY, "-c", burn])
    assert run.status == 0 and run.report is not None
    utime, stime, maxrss = run.report["ru"][:3]
    assert utime + stime >= 0.25 and maxrss > 1000
