"""The warm pool with real bwrap sandboxes: same results as cold, one execution per
sandbox, no leaks between requests, invalidation, timeouts from hand-off, off switch."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import tempfile
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from sandbox_executor.config import Settings
from sandbox_executor.engine import Engine
from sandbox_executor.models import ExecuteRequest, ExecutionResult, Status, TerminationReason
from sandbox_executor.pool import WarmPool
from sandbox_executor.proctree import process_tree_rss


def _private_dir(prefix: str, owner: tuple[int, int] | None = None) -> Path:
    # Under /tmp, not pytest's 0700 tree, which the sandbox user cannot traverse.
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    if owner is not None and os.geteuid() == 0:
        os.chown(path, *owner)
    return path


@pytest.fixture
def pool_dirs() -> Iterator[dict[str, Path]]:
    ids = Settings().sandbox_ids()
    base = _private_dir("pool-test-")
    workspace = base / "workspace"
    workspace.mkdir()
    workspace.chmod(0o755)
    if os.geteuid() == 0:
        os.chown(workspace, *ids)
    yield {"base": base, "workspace": workspace, "venv": base / "venv"}
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def pool_settings(pool_dirs: dict[str, Path]) -> Settings:
    return Settings(
        workspace_path=str(pool_dirs["workspace"]),
        results_dir=pool_dirs["base"] / "results",
        sandbox_venv_path=pool_dirs["venv"],
        warm_pool_size=1,
        memory_limit_mb=256,
    )


@asynccontextmanager
async def warm_engine(settings: Settings, **pool_kwargs: Any) -> AsyncIterator[tuple[Engine, WarmPool]]:
    sandboxes = Engine(settings).sandboxes
    pool = WarmPool(sandboxes, settings, **pool_kwargs)
    engine = Engine(settings, sandboxes, warm_source=pool)
    await pool.start()
    try:
        yield engine, pool
    finally:
        await pool.aclose()
        await engine.aclose()


def request(code: str, language: str = "python", **fields: Any) -> ExecuteRequest:
    return ExecuteRequest(
        execution_id=fields.pop("execution_id", "exec_pool_" + uuid.uuid4().hex[:8]),
        code=textwrap.dedent(code).lstrip("\n"),
        language=language,  # type: ignore[arg-type]
        **fields,
    )


async def run_warm(engine: Engine, pool: WarmPool, req: ExecuteRequest) -> ExecutionResult:
    """Run ``req`` on a sandbox whose interpreter was up before the request existed."""
    assert await pool.wait_ready(req.language, timeout=15), pool.stats()
    hits = pool.hits
    result = await engine.execute(req)
    assert pool.hits == hits + 1, "the execution did not take a warm sandbox"
    return result


def comparable(result: ExecutionResult) -> dict[str, Any]:
    return {
        "status": result.status,
        "exit_code": result.exit_code,
        "stdout": result.stdout,
        "stderr": result.stderr,
        "return_value": result.return_value,
        "termination_reason": result.termination_reason,
        "error": result.error,
        "artifacts": sorted(result.artifacts),
    }


SAME_RESULT_CASES = [
    pytest.param(
        "python",
        """
        import os, sys
        def handler(event):
            print("out", event["n"], os.environ.get("GREETING"))
            print("err", file=sys.stderr)
            return {"n": event["n"] * 2, "cwd": os.getcwd(), "uid": os.getuid()}
        """,
        id="python-success",
    ),
    pytest.param(
        "python",
        """
        def handler(event):
            return helper(event)
        def helper(event):
            raise ValueError("bad " + str(event["n"]))
        """,
        id="python-error",
    ),
    pytest.param(
        "javascript",
        """
        exports.handler = async (event) => {
          console.log('out', event.n, process.env.GREETING);
          console.error('err');
          return { n: event.n * 2, cwd: process.cwd() };
        };
        """,
        id="javascript-success",
    ),
    pytest.param("javascript", "throw new TypeError('nope ' + 1);\n", id="javascript-error"),
    pytest.param(
        "shell",
        """
        echo "out $GREETING $(cat "$SANDBOX_EVENT_FILE")"
        echo err >&2
        echo made > artifact.txt
        exit 3
        """,
        id="shell-exit-code",
    ),
]


@pytest.mark.parametrize(("language", "code"), SAME_RESULT_CASES)
async def test_warm_results_equal_cold_results(
    pool_settings: Settings, pool_dirs: dict[str, Path], language: str, code: str
) -> None:
    fields = {"event": {"n": 21}, "env_vars": {"GREETING": "hi"}, "timeout": 10}
    cold = await Engine(pool_settings).execute(request(code, language, execution_id="exec_same", **fields))
    for leftover in pool_dirs["workspace"].iterdir():
        leftover.unlink()
    async with warm_engine(pool_settings, pinned=(language,)) as (engine, pool):
        warm = await run_warm(engine, pool, request(code, language, execution_id="exec_same", **fields))
    assert comparable(warm) == comparable(cold)
    assert cold.status in (Status.SUCCESS, Status.FAILED), cold.stderr
    assert cold.stdout or cold.stderr


async def test_each_sandbox_serves_one_execution(pool_settings: Settings) -> None:
    code = """
        import os
        def handler(event):
            seen = os.path.exists("/tmp/previous-run")
            open("/tmp/previous-run", "w").write("x")
            return seen
    """
    async with warm_engine(pool_settings) as (engine, pool):
        assert await pool.wait_ready("python")
        (one,) = pool.waiting("python")
        first = await run_warm(engine, pool, request(code))
        assert not one.alive and one.used  # discarded after its one run
        assert await pool.wait_ready("python")
        (two,) = pool.waiting("python")
        assert two is not one and two.pid != one.pid
        second = await run_warm(engine, pool, request(code))
        assert first.status == second.status == Status.SUCCESS, (first.stderr, second.stderr)
        assert first.return_value is False
        assert second.return_value is False  # a fresh /tmp: a fresh sandbox
        assert pool.hits == 2 and pool.misses == 0


async def test_env_vars_do_not_leak_into_the_next_request(pool_settings: Settings) -> None:
    code = """
        import os
        def handler(event):
            before = {k: os.environ.get(k) for k in ("POOL_SECRET", "SET_INSIDE")}
            os.environ["SET_INSIDE"] = "yes"
            return before
    """
    async with warm_engine(pool_settings, pinned=("python", "shell")) as (engine, pool):
        first = await run_warm(engine, pool, request(code, env_vars={"POOL_SECRET": "s3cr3t"}))
        assert first.return_value == {"POOL_SECRET": "s3cr3t", "SET_INSIDE": None}
        second = await run_warm(engine, pool, request(code))
        assert second.return_value == {"POOL_SECRET": None, "SET_INSIDE": None}
        shell_code = 'echo "[${POOL_SECRET-unset}]"\n'
        third = await run_warm(engine, pool, request(shell_code, "shell", env_vars={"POOL_SECRET": "x"}))
        fourth = await run_warm(engine, pool, request(shell_code, "shell"))
        assert (third.stdout, fourth.stdout) == ("[x]\n", "[unset]\n")


def _write_module(tree: Path, value: int) -> None:
    tree.mkdir(parents=True)
    (tree / "pool_probe_mod.py").write_text(f"VALUE = {value}\n")
    for path in (tree, tree / "pool_probe_mod.py"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def _switch(link: Path, target: Path) -> None:
    tmp = link.with_name(link.name + ".new")
    os.symlink(target, tmp)
    os.replace(tmp, link)


PROBE = """
    def handler(event):
        import pool_probe_mod
        return pool_probe_mod.VALUE
"""


async def test_invalidate_discards_waiting_sandboxes(
    pool_settings: Settings, pool_dirs: dict[str, Path]
) -> None:
    venv = pool_dirs["venv"]
    _write_module(pool_dirs["base"] / "v1", 1)
    _switch(venv, pool_dirs["base"] / "v1")
    async with warm_engine(pool_settings) as (engine, pool):
        assert (await run_warm(engine, pool, request(PROBE))).return_value == 1
        assert await pool.wait_ready("python")
        old = pool.waiting("python")
        assert len(old) == 1 and old[0].pid is not None
        old_pid = old[0].pid

        # What the dependency manager does: build a new tree, switch, call on_change.
        _write_module(pool_dirs["base"] / "v2", 2)
        _switch(venv, pool_dirs["base"] / "v2")
        await pool.invalidate()
        assert not old[0].alive
        assert not Path(f"/proc/{old_pid}").exists() or _is_zombie(old_pid)
        result = await run_warm(engine, pool, request(PROBE))
        assert result.return_value == 2, result.stderr
        assert pool.stats().generation == 1


async def test_stale_sandbox_is_not_handed_out_without_invalidate(
    pool_settings: Settings, pool_dirs: dict[str, Path]
) -> None:
    # A switch nobody announced (an operator, a crashed sync): the pool notices by itself.
    venv = pool_dirs["venv"]
    _write_module(pool_dirs["base"] / "v1", 1)
    _switch(venv, pool_dirs["base"] / "v1")
    async with warm_engine(pool_settings) as (engine, pool):
        assert await pool.wait_ready("python")
        _write_module(pool_dirs["base"] / "v2", 2)
        _switch(venv, pool_dirs["base"] / "v2")
        result = await engine.execute(request(PROBE))
        assert result.return_value == 2, result.stderr
        assert pool.hits == 0 and pool.misses == 1


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2] in "ZX"


async def test_timeout_counts_from_hand_off(pool_settings: Settings) -> None:
    async with warm_engine(pool_settings) as (engine, pool):
        assert await pool.wait_ready("python")
        await asyncio.sleep(1.3)  # the sandbox has waited longer than the timeout below
        code = """
            import time
            def handler(event, context):
                left = context.get_remaining_time_in_millis()
                time.sleep(0.5)
                return left
        """
        ok = await run_warm(engine, pool, request(code, timeout=1))
        assert ok.status == Status.SUCCESS, ok.stderr
        assert 800 < ok.return_value <= 1000
        assert 0.5 <= ok.execution_time < 0.95

        slow = await run_warm(engine, pool, request("import time\ntime.sleep(10)\n", timeout=1))
        assert slow.status == Status.TIMEOUT and slow.termination_reason == TerminationReason.TIMEOUT
        assert 1.0 <= slow.execution_time < 1.6


async def test_dead_waiting_sandbox_is_never_handed_out(pool_settings: Settings) -> None:
    async with warm_engine(pool_settings) as (engine, pool):
        assert await pool.wait_ready("python")
        (victim,) = pool.waiting("python")
        assert victim.pid is not None
        os.kill(victim.pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while not _is_zombie(victim.pid) and time.monotonic() < deadline:
            time.sleep(0.005)  # blocking on purpose: the event loop must not notice yet
        assert victim.alive  # the loop has not processed the exit...
        assert pool.take("python") is None  # ...but take() looks for itself
        result = await engine.execute(request("def handler(event):\n    return 'fine'\n"))
        assert result.status == Status.SUCCESS and result.return_value == "fine"
        # A replacement comes up (after the failure back-off).
        assert await pool.wait_ready("python", timeout=10)


async def test_waiting_sandbox_uses_no_cpu_and_its_memory_is_reported(pool_settings: Settings) -> None:
    async with warm_engine(pool_settings, pinned=("python", "shell")) as (_engine, pool):
        assert await pool.wait_ready("python") and await pool.wait_ready("shell")
        pids = [s.pid for s in pool.waiting() if s.pid is not None]
        tree = _tree(pids)
        assert len(tree) >= 4  # bwrap and the interpreter, per sandbox
        await asyncio.sleep(0.2)
        before = _cpu_ticks(tree)
        await asyncio.sleep(1.0)
        assert _cpu_ticks(tree) == before
        stats = pool.stats()
        assert stats.warm_sandboxes == 2 and stats.ready == {"python": 1, "shell": 1}
        assert 2 * 2**20 < stats.memory_bytes < 200 * 2**20
        assert abs(stats.memory_bytes - process_tree_rss(pids)) < 2**20


def _tree(roots: list[int]) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat[stat.rfind(")") + 2 :].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    out, stack = [], list(roots)
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack.extend(children.get(pid, []))
    return out


def _cpu_ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total


async def test_pool_size_zero_is_off(pool_settings: Settings) -> None:
    settings = pool_settings.model_copy(update={"warm_pool_size": 0})
    async with warm_engine(settings) as (engine, pool):
        await asyncio.sleep(0.1)
        assert pool.take("python") is None
        assert pool.stats().warm_sandboxes == 0 and not pool.waiting()
        result = await engine.execute(request("def handler(event):\n    return 1\n"))
        assert result.status == Status.SUCCESS and result.return_value == 1
        assert pool.hits == 0


async def test_close_kills_waiting_sandboxes(pool_settings: Settings) -> None:
    engine = Engine(pool_settings)
    pool = WarmPool(engine.sandboxes, pool_settings, pinned=("python", "shell"))
    await pool.start()
    assert await pool.wait_ready("python") and await pool.wait_ready("shell")
    sandboxes = pool.waiting()
    await pool.aclose()
    assert all(not s.alive for s in sandboxes)
    assert pool.take("python") is None
    await engine.aclose()


EXIT_SEMANTICS = """
    import atexit, sys, threading, time
    log = open("/workspace/unclosed.txt", "w")  # never closed by the user
    log.write("buffered")
    atexit.register(lambda: print("atexit ran"))
    def late():
        time.sleep(0.2)
        print("thread finished")
    def handler(event):
        threading.Thread(target=late).start()  # non-daemon: the run waits for it
        return "ok"
"""


@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
async def test_exit_after_success_keeps_interpreter_exit_semantics(
    pool_settings: Settings, pool_dirs: dict[str, Path], warm: bool
) -> None:
    # The bootstrap skips the interpreter's teardown after a successful handler; what user
    # code can observe of a normal exit must still happen, in both paths.
    if warm:
        async with warm_engine(pool_settings) as (engine, pool):
            result = await run_warm(engine, pool, request(EXIT_SEMANTICS))
    else:
        result = await Engine(pool_settings).execute(request(EXIT_SEMANTICS))
    assert result.status == Status.SUCCESS and result.exit_code == 0, result.stderr
    assert result.return_value == "ok"
    assert result.stdout == "thread finished\natexit ran\n"
    assert (pool_dirs["workspace"] / "unclosed.txt").read_text() == "buffered"
    assert result.execution_time >= 0.2


USER_TRACEBACK = """
    import traceback
    def handler(event):
        try:
            raise KeyError("missing")  # the line the trace must show
        except KeyError:
            traceback.print_exc()
        return "handled"
"""


@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
async def test_user_tracebacks_show_the_submitted_source(
    pool_settings: Settings, pool_dirs: dict[str, Path], warm: bool
) -> None:
    # The bootstrap registers the source with linecache only when something imports it;
    # a workspace file with the handler's name must not be shown instead.
    decoy = pool_dirs["workspace"] / "handler.py"
    decoy.write_text("DECOY LINE 1\nDECOY LINE 2\nDECOY LINE 3\nDECOY LINE 4\n")
    decoy.chmod(0o644)
    if warm:
        async with warm_engine(pool_settings) as (engine, pool):
            result = await run_warm(engine, pool, request(USER_TRACEBACK))
    else:
        result = await Engine(pool_settings).execute(request(USER_TRACEBACK))
    assert result.status == Status.SUCCESS and result.return_value == "handled", result.stderr
    assert 'File "handler.py", line 4, in handler' in result.stderr
    assert 'raise KeyError("missing")  # the line the trace must show' in result.stderr
    assert "DECOY" not in result.stderr


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ('{"t": "é ☃ \\u2028", "n": [1, 2.5, -0.0, None, True], "big": 2**70, "e": event}', None),
        ("{1: 'int key', None: 'none key'}", {"1": "int key", "null": "none key"}),
        ("{1, 2}", "TypeError: Object of type set is not JSON serializable"),
        ("float('nan')", "ValueError: Out of range float values are not JSON compliant"),
    ],
)
async def test_return_values_are_encoded_like_json_dumps(
    pool_settings: Settings, expression: str, expected: Any
) -> None:
    import json

    event = {"k": ["v", 1.5, {"deep": None}], "u": "ü"}
    code = f"def handler(event):\n    return {expression}\n"
    async with warm_engine(pool_settings) as (engine, pool):
        result = await run_warm(engine, pool, request(code, event=event))
    if isinstance(expected, str):
        assert result.status == Status.FAILED
        assert expected in result.stderr and "NonSerializableReturn" not in result.stdout
    else:
        assert result.status == Status.SUCCESS, result.stderr
        namespace: dict[str, Any] = {"event": event}
        want = expected if expected is not None else json.loads(json.dumps(eval(expression, namespace)))
        assert result.return_value == want


async def test_invalidate_during_a_start_still_refills(pool_settings: Settings) -> None:
    async with warm_engine(pool_settings) as (engine, pool):
        for _ in range(20):
            if pool.stats().starting:
                break
            await asyncio.sleep(0)
        assert pool.stats().starting == 1  # the first start is in flight...
        await pool.invalidate()  # ...and belongs to the old generation now
        assert await pool.wait_ready("python", timeout=10), pool.stats()
        assert pool.stats().warm_sandboxes == 1
        result = await run_warm(engine, pool, request("def handler(event):\n    return 'new'\n"))
        assert result.return_value == "new"
