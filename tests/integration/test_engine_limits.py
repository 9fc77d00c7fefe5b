"""Limits through the real engine: timeouts, memory, processes, output floods, rusage."""

from __future__ import annotations

import asyncio
import textwrap
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from sandbox_executor.config import MIB
from sandbox_executor.models import ExecutionResult, Status, TerminationReason

RunCode = Callable[..., Awaitable[ExecutionResult]]


def _code(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def _pidns(stdout: str) -> str:
    line = next(x for x in stdout.splitlines() if x.startswith("pidns="))
    return line.split("=", 1)[1]


async def _assert_timeout(result: ExecutionResult, timeout: int, wall: float) -> None:
    assert result.status == Status.TIMEOUT, (result.status, result.stderr)
    assert result.exit_code == -1
    assert result.termination_reason == TerminationReason.TIMEOUT
    assert result.stderr.endswith(f"Execution timeout after {timeout} seconds")
    # Killed at the deadline: the target is 100 ms, asserted with slack for a busy CI.
    assert timeout <= result.execution_time < timeout + 0.5, result.execution_time
    assert wall < timeout + 1.0, wall


PY_TREE = _code(
    """
    import os, signal, subprocess, sys, time
    MARK = {marker!r}
    print("pidns=" + os.readlink("/proc/self/ns/pid"), flush=True)
    print("partial output before the deadline", flush=True)
    sleeper = [sys.executable, "-c", "import time; time.sleep(300)", MARK]
    # 1. a plain background child
    subprocess.Popen(sleeper)
    # 2. a double-forked child in its own session (escapes a process-group kill)
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.execv(sys.executable, sleeper)
        os._exit(0)
    # 3. a child that ignores SIGTERM (and SIGINT, SIGHUP)
    stubborn = ("import signal, time\\n"
                "for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):\\n"
                "    signal.signal(s, signal.SIG_IGN)\\n"
                "print('stubborn ready', flush=True)\\n"
                "time.sleep(300)\\n")
    subprocess.Popen([sys.executable, "-c", stubborn, MARK])
    time.sleep(0.3)

    def handler(event):
        print("in handler", flush=True)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        while True:
            time.sleep(1)
    """
)


async def test_timeout_kills_the_whole_tree_on_time(run_code: RunCode, host: Any, marker: str) -> None:
    started = time.monotonic()
    result = await run_code(PY_TREE.format(marker=marker), timeout=1)
    wall = time.monotonic() - started
    await _assert_timeout(result, 1, wall)
    assert "partial output before the deadline\n" in result.stdout
    assert "stubborn ready" in result.stdout and "in handler" in result.stdout
    # Nothing of the sandbox survives: neither by argv marker nor by PID namespace.
    assert host.processes_with(marker=marker, pidns=_pidns(result.stdout)) == []


async def test_timeout_shell_background_setsid_and_trap(run_code: RunCode, host: Any, marker: str) -> None:
    code = _code(
        f"""
        echo "pidns=$(readlink /proc/self/ns/pid)"
        trap '' TERM INT HUP
        (exec -a {marker}-bg sleep 300) &
        setsid bash -c 'exec -a {marker}-setsid sleep 300' &
        bash -c "trap '' TERM; exec -a {marker}-trap sleep 300" &
        echo started
        sleep 300
        """
    )
    started = time.monotonic()
    result = await run_code(code, "shell", timeout=1)
    wall = time.monotonic() - started
    await _assert_timeout(result, 1, wall)
    assert "started\n" in result.stdout
    assert host.processes_with(marker=marker, pidns=_pidns(result.stdout)) == []


async def test_timeout_javascript_busy_loop(run_code: RunCode, host: Any, marker: str) -> None:
    code = _code(
        f"""
        const cp = require('child_process');
        const fs = require('fs');
        console.log('pidns=' + fs.readlinkSync('/proc/self/ns/pid'));
        cp.spawn('/bin/sh', ['-c', 'exec -a {marker} sleep 300'], {{detached: true, stdio: 'ignore'}});
        process.on('SIGTERM', () => {{}});
        exports.handler = () => {{ console.log('spinning'); for (;;) {{}} }};
        """
    )
    started = time.monotonic()
    result = await run_code(code, "javascript", timeout=1)
    wall = time.monotonic() - started
    await _assert_timeout(result, 1, wall)
    assert "spinning\n" in result.stdout
    assert host.processes_with(marker=marker, pidns=_pidns(result.stdout)) == []


async def test_finished_run_leaves_no_background_process(run_code: RunCode, host: Any, marker: str) -> None:
    code = _code(
        f"""
        import os, subprocess, sys
        def handler(event):
            subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", {marker!r}])
            return os.readlink("/proc/self/ns/pid")
        """
    )
    result = await run_code(code)
    assert result.status == Status.SUCCESS, result.stderr
    assert host.processes_with(marker=marker, pidns=result.return_value) == []


@pytest.mark.parametrize(
    ("language", "code"),
    [
        (
            "python",
            "def handler(event):\n    hog = []\n    while True:\n        hog.append(bytearray(8 << 20))\n",
        ),
        ("javascript", "const hog = [];\nfor (;;) hog.push(new Array(1e6).fill(1.5));\n"),
        (
            "javascript",
            "exports.handler = () => { const h = []; for (;;) h.push(Buffer.alloc(8 << 20, 1)); };\n",
        ),
        ("shell", 'x=aaaaaaaa\nwhile true; do x="$x$x"; done\n'),
    ],
    ids=["python", "node-heap", "node-buffers", "bash"],
)
async def test_memory_bomb(
    run_code: RunCode, make_settings: Any, host: Any, language: str, code: str
) -> None:
    settings = make_settings(memory_limit_mb=192)
    rss_before = host.rss_kib()
    result = await run_code(code, language, settings=settings, timeout=10)
    assert result.status == Status.FAILED, (result.status, result.stderr[-2000:])
    assert result.termination_reason == TerminationReason.MEMORY_LIMIT, result.stderr[-2000:]
    assert result.exit_code != 0
    assert result.execution_time < 8
    # The sandbox really grew to its cap (kernel accounting of its tree) ...
    assert result.metrics is not None and result.metrics.peak_memory_mb is not None
    assert 100 < result.metrics.peak_memory_mb < 192 + 64
    # ... and the daemon did not: its RSS is where it was and it still runs code.
    assert host.rss_kib() - rss_before < 30 * 1024
    after = await run_code("def handler(event):\n    return 'still fine'\n")
    assert after.return_value == "still fine"


async def test_fork_bomb_is_contained(run_code: RunCode, make_settings: Any, host: Any, marker: str) -> None:
    settings = make_settings(pids_limit=64)
    code = _code(
        f"""
        echo "pidns=$(readlink /proc/self/ns/pid)"
        exec -a {marker} bash -c 'b() {{ b | b & }}; b; sleep 300'
        """
    )
    result = await run_code(code, "shell", settings=settings, timeout=2)
    assert result.status == Status.TIMEOUT
    assert "Resource temporarily unavailable" in result.stderr or "retry" in result.stderr
    assert host.processes_with(marker=marker, pidns=_pidns(result.stdout)) == []
    # The host can still fork, and so can the next sandbox.
    after = await run_code(
        "import subprocess\ndef handler(e):\n    return subprocess.run(['true']).returncode\n"
    )
    assert after.status == Status.SUCCESS and after.return_value == 0


async def test_pids_cap_counts(run_code: RunCode, make_settings: Any, host: Any, marker: str) -> None:
    settings = make_settings(pids_limit=40)
    code = _code(
        f"""
        import os, sys, time
        def handler(event):
            ns = os.readlink("/proc/self/ns/pid")
            n = 0
            while n < 1000:
                try:
                    pid = os.fork()
                except OSError:
                    break
                if pid == 0:
                    sleeper = [sys.executable, "-c", "import time; time.sleep(300)", {marker!r}]
                    os.execv(sys.executable, sleeper)
                n += 1
            return [n, ns]
        """
    )
    result = await run_code(code, settings=settings)
    assert result.status == Status.SUCCESS, result.stderr
    forked, ns = result.return_value
    assert 5 <= forked < 40
    assert host.processes_with(marker=marker, pidns=ns) == []


async def test_output_flood_is_capped_and_costs_the_daemon_nothing(
    run_code: RunCode, make_settings: Any, host: Any
) -> None:
    cap = 1 * MIB
    settings = make_settings(max_output_bytes=cap)
    code = _code(
        """
        import sys
        def handler(event):
            block = b"0123456789abcdef" * 65536  # 1 MiB
            for _ in range(50):
                sys.stdout.buffer.write(block)
            for _ in range(5):
                sys.stderr.buffer.write(block)
            sys.stdout.buffer.flush()
            return "flooded"
        """
    )
    host.reset_peak_rss()
    baseline = host.rss_kib("VmRSS")
    result = await run_code(code, settings=settings, timeout=20)
    peak_growth_kib = host.rss_kib("VmHWM") - baseline
    assert result.status == Status.SUCCESS, result.stderr[-500:]
    assert result.return_value == "flooded"
    assert result.stdout_truncated and result.stderr_truncated
    assert len(result.stdout.encode()) == cap and len(result.stderr.encode()) == cap
    assert result.stdout.startswith("0123456789abcdef")
    assert peak_growth_kib < 30 * 1024, f"daemon peak RSS grew by {peak_growth_kib} KiB"


async def test_invalid_utf8_output_never_fails_a_run(run_code: RunCode) -> None:
    code = _code(
        """
        import os, sys
        def handler(event):
            os.write(1, b"ok \\xff\\xfe \\xc3( \\xed\\xa0\\x80 end\\n")
            os.write(2, b"\\x80\\x81 err\\n")
            return "done"
        """
    )
    result = await run_code(code)
    assert result.status == Status.SUCCESS
    assert result.stdout.startswith("ok \ufffd\ufffd ") and result.stdout.endswith(" end\n")
    assert "err" in result.stderr
    result.model_dump_json()  # serializable as it is
    shell = await run_code("printf 'a\\377b\\n'\n", "shell")
    assert shell.status == Status.SUCCESS and shell.stdout == "a\ufffdb\n"


async def test_file_size_rlimit(run_code: RunCode, make_settings: Any) -> None:
    settings = make_settings(max_file_size_mb=1)
    code = _code(
        """
        def handler(event):
            try:
                with open("/tmp/big", "wb") as f:
                    f.write(b"x" * (2 * 1024 * 1024))
            except OSError as exc:
                return exc.errno
            return "wrote"
        """
    )
    result = await run_code(code, settings=settings)
    assert result.return_value == 27  # EFBIG


async def test_rusage_covers_the_whole_tree(run_code: RunCode) -> None:
    code = _code(
        """
        import subprocess, sys, time
        def handler(event):
            # CPU burnt in a child process counts too (kernel accounting, not sampling).
            subprocess.run([sys.executable, "-c", "x = 0\\nfor i in range(3_000_000): x += i"], check=True)
            end = time.process_time() + 0.2
            while time.process_time() < end:
                pass
            blob = bytearray(100 * 1024 * 1024)
            for i in range(0, len(blob), 4096):
                blob[i] = 1
            return len(blob)
        """
    )
    result = await run_code(code, timeout=20)
    assert result.status == Status.SUCCESS, result.stderr
    m = result.metrics
    assert m is not None and m.cpu_time_ms is not None and m.peak_memory_mb is not None
    assert m.cpu_time_ms > 250, m
    assert m.cpu_time_ms < m.duration_ms * 2 + 50
    assert 100 <= m.peak_memory_mb < 200, m
    assert m.duration_ms >= 200
    assert m.io_read_bytes is not None and m.io_write_bytes is not None


async def test_rusage_of_a_run_killed_at_the_deadline(run_code: RunCode) -> None:
    # The sandbox's init (the interpreter) spins until it is killed: its CPU time is still
    # the kernel's figure. (Processes still running when the namespace is torn down are
    # reaped by the kernel itself and are not in the figure; see process.py.)
    result = await run_code("def handler(event):\n    while True:\n        pass\n", timeout=1)
    assert result.status == Status.TIMEOUT
    assert result.metrics is not None and result.metrics.cpu_time_ms is not None
    # Far above start-up cost (~30 ms) even on a loaded machine; the spin is the only load.
    assert 100 < result.metrics.cpu_time_ms < 1500, result.metrics


async def test_concurrent_runs_do_not_mix(run_code: RunCode) -> None:
    code = "import time\ndef handler(e):\n    print(e['i'])\n    time.sleep(0.2)\n    return e['i']\n"
    results = await asyncio.gather(*(run_code(code, event={"i": i}) for i in range(4)))
    assert [r.return_value for r in results] == [0, 1, 2, 3]
    assert [r.stdout for r in results] == ["0\n", "1\n", "2\n", "3\n"]


async def test_tmp_is_a_size_capped_tmpfs(run_code: RunCode, make_settings: Any) -> None:
    settings = make_settings(tmpfs_size_mb=8)
    code = _code(
        """
        import os
        def handler(event):
            written = 0
            try:
                with open("/tmp/fill", "wb") as f:
                    for _ in range(64):
                        f.write(b"x" * (1 << 20))
                        f.flush()
                        written += 1
            except OSError as exc:
                return [written, exc.errno, os.listdir("/tmp")]
            return [written, None, os.listdir("/tmp")]
        """
    )
    result = await run_code(code, settings=settings)
    written, errno_, listing = result.return_value
    assert errno_ == 28 and written <= 8  # ENOSPC at the cap
    assert listing == ["fill"]  # fresh: nothing of the host's /tmp


async def test_open_files_rlimit(run_code: RunCode, make_settings: Any) -> None:
    settings = make_settings(max_open_files=100)
    code = _code(
        """
        import os
        def handler(event):
            fds = []
            try:
                while len(fds) < 10000:
                    fds.append(os.open("/dev/null", os.O_RDONLY))
            except OSError as exc:
                return [len(fds), exc.errno]
        """
    )
    result = await run_code(code, settings=settings)
    opened, errno_ = result.return_value
    assert errno_ == 24 and opened < 100  # EMFILE


async def test_cpu_time_rlimit_is_a_backstop(run_code: RunCode, make_settings: Any) -> None:
    settings = make_settings(cpu_time_limit_seconds=1)
    spin = "def handler(event):\n    while True:\n        pass\n"
    result = await run_code(spin, settings=settings, timeout=10)
    assert result.status == Status.FAILED
    assert result.termination_reason == TerminationReason.SIGNALED
    assert result.execution_time < 4


async def test_a_fork_bomb_does_not_starve_a_concurrent_sandbox(
    run_code: RunCode, make_settings: Any, host: Any, marker: str
) -> None:
    settings = make_settings(pids_limit=32, max_concurrent_executions=2)
    bomb = _code(
        f"""
        echo "pidns=$(readlink /proc/self/ns/pid)"
        exec -a {marker} bash -c 'b() {{ b | b & }}; b; sleep 300'
        """
    )
    worker = _code(
        """
        import subprocess, time
        def handler(event):
            time.sleep(0.7)  # the bomb has filled its cap by now
            return [subprocess.run(["true"]).returncode for _ in range(10)]
        """
    )
    bombed, worked = await asyncio.gather(
        run_code(bomb, "shell", settings=settings, timeout=3),
        run_code(worker, settings=settings, timeout=10),
    )
    assert bombed.status == Status.TIMEOUT
    assert "retry" in bombed.stderr or "Resource temporarily unavailable" in bombed.stderr
    assert worked.status == Status.SUCCESS, worked.stderr
    assert worked.return_value == [0] * 10
    assert host.processes_with(marker=marker, pidns=_pidns(bombed.stdout)) == []


async def test_requested_timeout_is_clamped_to_the_maximum(run_code: RunCode, make_settings: Any) -> None:
    settings = make_settings(max_timeout_seconds=1)
    sleeper = "import time\ndef handler(e):\n    time.sleep(30)\n"
    result = await run_code(sleeper, settings=settings, timeout=20)
    assert result.status == Status.TIMEOUT
    assert result.stderr.endswith("Execution timeout after 1 seconds")
    assert result.execution_time < 1.5
