"""The executor's latency and footprint benchmark: one command, one table.

    make bench            # or: .venv/bin/python benchmarks/run.py [--quick]

Measures, in one run on this machine (it must run as root, like the daemon in tests):

* bare interpreters: ``python3 -c pass``, then the hello world of each language run by
  ``python3``, ``node`` and ``bash`` directly, and the same commands inside bare ``bwrap``
  (the engine's mounts and namespace flags, no daemon);
* the executor end to end, ``POST /execute?wait=true`` to the full response over a
  persistent HTTP connection, per language, on a cold daemon (``WARM_POOL_SIZE=0``) and a
  warm one (``WARM_POOL_SIZE=1``; between timed requests it waits until the pool has a
  sandbox whose interpreter is up, as a control plane's think time would allow);
* the result callback: the daemon reports to a fake control plane on loopback (the tests'
  ``FakeControlPlane``, in its own process); the delay is the callback's arrival minus
  the moment the handler returned (``time.monotonic()`` is one clock for every process);
* the daemon: RSS and open descriptors when idle, then after 1000 back-to-back executions;
* live output (``benchmarks/live_output.py``): a warm hello over ``?stream=true`` vs
  ``?wait=true``, the delay from a program's write to an SSE client, and slow clients;
* the python hello world cold and warm at each isolation level this host can give
  (``SANDBOX_ISOLATION`` = bwrap, bwrap-compat, landlock), and the kernel's Landlock ABI;
* dependency syncs (``dependency_sync.py``): one-wheel installs, a merge, a no-op re-sync,
  and what the installer's egress proxy costs a one-wheel install;
* the acceptance journal: ``Journal.accept()`` (write + fdatasync) on the disk the test
  daemons use, and the mean the warm daemon's own ``sandbox_journal_write_seconds`` saw;
* the whole-run memory bounds: how far past a 256 MiB limit the fastest allocator got
  before it was stopped, under the memory watchdog and under cgroup v1 where the host has it.

It prints medians, p95 and the ratios to the bare runs, checks the latency and footprint targets, and
writes the same figures to ``benchmarks/results/latest.json``. About two minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "src"))

import httpx  # noqa: E402

from benchmarks import dependency_sync, live_output  # noqa: E402
from sandbox_executor.bwrap import SandboxSpec, build_bwrap_argv  # noqa: E402
from sandbox_executor.host import host_system_mounts  # noqa: E402
from sandbox_executor.runtimes import base_environment  # noqa: E402
from tests.support.server import RunningServer, start_server, stop_server  # noqa: E402

PY = "/usr/bin/python3"
NODE = "/usr/bin/node"
BASH = "/bin/bash"
SANDBOX_UID = 65534
RESULTS = REPO / "benchmarks" / "results"

HELLO = "hello world"
# What the executor runs, per language; the handler returns the moment it finished, for
# the callback measurement.
EXECUTOR_CODE = {
    "python": (f"import time\ndef handler(event):\n    print({HELLO!r})\n    return time.monotonic()\n"),
    "javascript": f"console.log({HELLO!r});\n",
    "shell": f"echo '{HELLO}'\n",
}
# The same hello world, as a bare interpreter runs it.
BARE_COMMAND = {
    "python": [PY, "-c", f"print({HELLO!r})"],
    "javascript": [NODE, "-e", f"console.log({HELLO!r})"],
    "shell": [BASH, "-c", f"echo '{HELLO}'"],
}
BINARY = {"python": "python3", "javascript": "node", "shell": "bash"}

# Per-language sample counts (full run, --quick divides by 3).
SAMPLES = {"python": 120, "javascript": 40, "shell": 120}
LOAD_EXECUTIONS = 1000


# ---------------------------------------------------------------------- statistics
def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(values_s: Sequence[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values_s]
    return {
        "n": len(ms),
        "median_ms": round(statistics.median(ms), 3),
        "p95_ms": round(pct(ms, 0.95), 3),
        "min_ms": round(min(ms), 3),
        "max_ms": round(max(ms), 3),
    }


def timed(fn: Callable[[], Any], n: int) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


# ---------------------------------------------------------------------- bare runs
def _run_quiet(argv: list[str], **kwargs: Any) -> None:
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, **kwargs)


def bwrap_argv(command: list[str], workspace: Path, language: str) -> list[str]:
    """The engine's bwrap flags (mounts, namespaces, read-only root, clean environment),
    without its per-start extras (seccomp program, synthetic /etc files, info fd)."""
    spec = SandboxSpec(
        command=command,
        workspace=str(workspace),
        system_mounts=host_system_mounts(),
        env=base_environment_for(language),
    )
    return build_bwrap_argv(spec)


def base_environment_for(language: str) -> list[tuple[str, str]]:
    from sandbox_executor.config import Settings

    return base_environment(Settings(), language)  # type: ignore[arg-type]


def measure_bare(workspace: Path, scale: float) -> dict[str, Any]:
    as_sandbox_user = {"user": SANDBOX_UID, "group": SANDBOX_UID, "extra_groups": []}
    out: dict[str, Any] = {}
    n_py = max(10, int(SAMPLES["python"] * scale))
    startups = (
        ([PY, "-c", "pass"], "python3 -c pass"),
        ([PY, "-I", "-S", "-c", "pass"], "python3 -I -S -c pass"),
    )
    for argv, name in startups:
        _run_quiet(argv)
        out[name] = summary(timed(lambda a=argv: _run_quiet(a), n_py))  # type: ignore[misc]
    for language, argv in BARE_COMMAND.items():
        n = max(10, int(SAMPLES[language] * scale))
        wrapped = bwrap_argv(argv, workspace, language)
        _run_quiet(argv)
        _run_quiet(wrapped, **as_sandbox_user)
        out[f"{BINARY[language]} hello"] = summary(timed(lambda a=argv: _run_quiet(a), n))  # type: ignore[misc]
        out[f"bwrap {BINARY[language]} hello"] = summary(
            timed(lambda a=wrapped: _run_quiet(a, **as_sandbox_user), n)  # type: ignore[misc]
        )
    return out


# ---------------------------------------------------------------------- fake control plane
FAKE_CP_SCRIPT = """
import json, sys
sys.path.insert(0, {repo!r})
from tests.support.fake_control_plane import FakeControlPlane
with FakeControlPlane() as cp:
    print(cp.url, flush=True)
    for line in sys.stdin:
        if line.strip() == "dump":
            rows = [
                {{"kind": r.kind, "execution_id": r.execution_id, "arrived": r.arrived_monotonic,
                  "status": r.status}}
                for r in cp.requests()
            ]
            print(json.dumps(rows), flush=True)
"""


class FakeControlPlaneProcess:
    """The tests' FakeControlPlane in a process of its own (so this process's GIL does not
    delay its clock readings)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", FAKE_CP_SCRIPT.format(repo=str(REPO))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http"):
            raise RuntimeError("the fake control plane did not start")

    def records(self) -> list[dict[str, Any]]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("dump\n")
        self.proc.stdin.flush()
        return list(json.loads(self.proc.stdout.readline()))

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ---------------------------------------------------------------------- daemon
def daemon_rss(server: RunningServer) -> int:
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def daemon_fds(server: RunningServer) -> int:
    """Open descriptors, the least of five readings 0.2 s apart: a callback connection or a
    sandbox being replaced at the instant of one reading is not a leak."""
    counts = []
    for _ in range(5):
        counts.append(len(os.listdir(f"/proc/{server.process.pid}/fd")))
        time.sleep(0.2)
    return min(counts)


def fd_kinds(server: RunningServer) -> dict[str, int]:
    """Open descriptors by kind (pipe, socket, anon_inode:[pidfd]...), for the JSON."""
    kinds: dict[str, int] = {}
    base = f"/proc/{server.process.pid}/fd"
    for name in os.listdir(base):
        try:
            target = os.readlink(f"{base}/{name}")
        except OSError:
            continue
        kind = target.split(":[")[0] if ":[" in target else ("file" if target.startswith("/") else target)
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def helper_rss(server: RunningServer) -> int:
    """RSS of the daemon's own helper processes (e.g. a spawner), sandboxes not counted."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_bytes()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(b")") + 2 :].split()[1])
        if ppid == server.process.pid and not cmdline.startswith(b"bwrap"):
            for line in Path(f"/proc/{entry}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


_GAUGE = re.compile(r'^sandbox_warm_pool_(ready|sandboxes)\{language="(\w+)"\} ([0-9.e+]+)$', re.M)


def pool_ready(client: httpx.Client, language: str) -> bool:
    """Whether the daemon's pool has a sandbox for ``language`` whose interpreter is up."""
    text = client.get("/metrics").text
    values = {(m[0], m[1]): float(m[2]) for m in _GAUGE.findall(text)}
    if ("ready", language) in values:
        return values[("ready", language)] >= 1
    return values.get(("sandboxes", language), 0) >= 1


def wait_pool_ready(client: httpx.Client, language: str, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pool_ready(client, language):
            return True
        time.sleep(0.01)
    return False


class Executor:
    """A daemon plus a persistent client; ``run()`` posts one execution and waits."""

    def __init__(self, server: RunningServer, tag: str) -> None:
        self.server = server
        self.client = httpx.Client(base_url=server.url, timeout=60)
        self.tag = tag
        self.count = 0
        self.handler_returned: dict[str, float] = {}
        self.responded: dict[str, float] = {}

    def run(self, language: str, code: str | None = None) -> float:
        self.count += 1
        eid = f"exec_bench_{self.tag}_{self.count:06d}"
        body = {
            "execution_id": eid,
            "session_id": "bench",
            "language": language,
            "code": code or EXECUTOR_CODE[language],
            "timeout": 10,
        }
        started = time.perf_counter()
        response = self.client.post("/execute", params={"wait": "true"}, json=body)
        elapsed = time.perf_counter() - started
        self.responded[eid] = time.monotonic()
        doc = response.json()
        if response.status_code != 200 or doc.get("status") != "success":
            raise RuntimeError(f"{language} execution failed: {response.status_code} {doc}")
        if language == "python" and isinstance(doc.get("return_value"), float):
            self.handler_returned[eid] = doc["return_value"]
        return elapsed

    def series(self, language: str, n: int, *, warm: bool, gap: float = 0.02) -> list[float]:
        out = []
        for _ in range(n):
            time.sleep(gap)
            if warm and not wait_pool_ready(self.client, language):
                print(f"  warning: no warm {language} sandbox within 3 s", file=sys.stderr)
            out.append(self.run(language))
        return out

    def close(self) -> None:
        self.client.close()


# The daemon keeps the last EXECUTIONS_RETENTION_COUNT results in memory by design; the
# footprint check fills that history first, so that growth after it means a leak.
RETENTION = 200
WARMUP_EXECUTIONS = 300


def start_daemon(pool_size: int, control_plane_url: str, isolation: str = "auto") -> RunningServer:
    return start_server(
        {
            "WARM_POOL_SIZE": str(pool_size),
            "CONTROL_PLANE_URL": control_plane_url,
            "HOSTNAME": "bench-executor",
            "LOG_LEVEL": "INFO",
            "MAX_QUEUED_EXECUTIONS": "100",
            "EXECUTIONS_RETENTION_COUNT": str(RETENTION),
            "SANDBOX_ISOLATION": isolation,
        }
    )


LEVELS = ("bwrap", "bwrap-compat", "landlock")
LEVEL_SAMPLES = 60


def measure_levels(cp: FakeControlPlaneProcess, scale: float) -> dict[str, Any]:
    """The python hello world, cold and warm, at each isolation level (a level this host
    cannot give is reported as such)."""
    from sandbox_executor.config import Settings
    from sandbox_executor.isolation_probes import detect

    out: dict[str, Any] = {}
    n = max(10, int(LEVEL_SAMPLES * scale))
    for level in LEVELS:
        decision, _ = detect(Settings(sandbox_isolation=level))  # type: ignore[arg-type]
        if decision.level is None:
            out[level] = {"unavailable": decision.refusal}
            continue
        out[level] = {}
        for path, pool in (("cold", 0), ("warm", 1)):
            server = start_daemon(pool, cp.url, level)
            ex = Executor(server, f"{level}-{path}")
            try:
                if ex.client.get("/health").json()["isolation"] != level:
                    raise RuntimeError(f"the daemon did not run at {level}")
                if pool:
                    wait_pool_ready(ex.client, "python", 10)
                ex.run("python")
                out[level][path] = summary(ex.series("python", n, warm=bool(pool)))
            finally:
                ex.close()
                stop_server(server)
                shutil.rmtree(server.workspace.parent, ignore_errors=True)
    return out


def settle(server: RunningServer, seconds: float = 1.0) -> None:
    """Let background work (callbacks, pool refills) finish before a footprint reading."""
    time.sleep(seconds)


def measure_executor(cp: FakeControlPlaneProcess, scale: float) -> dict[str, Any]:
    out: dict[str, Any] = {"cold": {}, "warm": {}}
    languages = list(EXECUTOR_CODE)

    # Cold path: no pool, every execution starts its sandbox after the request arrived.
    server = start_daemon(0, cp.url)
    ex = Executor(server, "cold")
    try:
        for language in languages:
            ex.run(language)  # first-run effects (page cache, lazy imports) are not the path
            n = max(10, int(SAMPLES[language] * scale))
            out["cold"][language] = summary(ex.series(language, n, warm=False))
        cold_returned = dict(ex.handler_returned)
    finally:
        ex.close()
        stop_server(server)
        shutil.rmtree(server.workspace.parent, ignore_errors=True)

    # Warm path, then the footprint under 1000 executions, on one daemon.
    server = start_daemon(1, cp.url)
    ex = Executor(server, "warm")
    try:
        wait_pool_ready(ex.client, "python", 10)
        settle(server)
        idle = {
            "rss_bytes": daemon_rss(server),
            "fds": daemon_fds(server),
            "helper_rss_bytes": helper_rss(server),
        }
        for language in languages:
            ex.run(language)
            n = max(10, int(SAMPLES[language] * scale))
            out["warm"][language] = summary(ex.series(language, n, warm=True))
        warm_returned = dict(ex.handler_returned)
        out["journal_in_daemon"] = journal_in_daemon(ex.client.get("/metrics").text)
        # Footprint: a warm-up round that fills the result history, then LOAD_EXECUTIONS
        # back to back (python; the pool serves what it can keep up with).
        load = [ex.run("python") for _ in range(WARMUP_EXECUTIONS)]
        settle(server)
        before = {"rss_bytes": daemon_rss(server), "fds": daemon_fds(server), "fd_kinds": fd_kinds(server)}
        load = [ex.run("python") for _ in range(LOAD_EXECUTIONS)]
        settle(server, 2.0)
        after = {"rss_bytes": daemon_rss(server), "fds": daemon_fds(server), "fd_kinds": fd_kinds(server)}
        health = ex.client.get("/health").json()
        metrics_text = ex.client.get("/metrics").text
    finally:
        ex.close()
        stop_server(server)
        shutil.rmtree(server.workspace.parent, ignore_errors=True)
    takes = {
        outcome: sum(
            float(v)
            for v in re.findall(
                rf'^sandbox_warm_pool_takes_total\{{[^}}]*outcome="{outcome}"[^}}]*\}} ([0-9.e+]+)$',
                metrics_text,
                re.M,
            )
        )
        for outcome in ("hit", "miss")
    }
    out["back_to_back_python"] = summary(load) | {"pool_hits": takes["hit"], "pool_misses": takes["miss"]}
    out["footprint"] = {
        "idle": idle,
        "after_warmup": before,
        f"after_{LOAD_EXECUTIONS}": after,
        "rss_growth_bytes": after["rss_bytes"] - before["rss_bytes"],
        "fd_growth": after["fds"] - before["fds"],
        "pool_at_end": {
            "warm_sandboxes": health.get("warm_sandboxes"),
            "memory_bytes": health.get("warm_pool_memory_bytes"),
        },
    }

    # Callbacks: arrival at the control plane minus the handler's return (paced series only).
    time.sleep(1.0)
    arrivals = {r["execution_id"]: r["arrived"] for r in cp.records() if r["kind"] == "result"}
    for name, returned in (("cold", cold_returned), ("warm", warm_returned)):
        delays = [arrivals[eid] - t for eid, t in returned.items() if eid in arrivals]
        missing = len(returned) - len(delays)
        out[f"callback_{name}"] = summary(delays) | {"missing": missing}
    return out


# ---------------------------------------------------------------------- run bounds, journal
def journal_in_daemon(metrics_text: str) -> dict[str, float]:
    """Mean journal write of the warm daemon so far, from its own histogram."""
    values = {}
    for name in ("sum", "count"):
        found = re.search(rf"^sandbox_journal_write_seconds_{name} ([0-9.e+-]+)$", metrics_text, re.M)
        values[name] = float(found[1]) if found else 0.0
    mean = values["sum"] / values["count"] * 1000 if values["count"] else float("nan")
    return {"n": values["count"], "mean_ms": round(mean, 3)}


def measure_bounds_and_journal(scale: float) -> dict[str, Any]:
    """The journal's cost per acceptance, and the memory bounds' overshoot."""
    import tempfile

    from benchmarks.journal_cost import journal_accept
    from benchmarks.run_bounds_figures import overshoot_once
    from sandbox_executor.poller import Poller
    from sandbox_executor.run_bounds import BoundsUnavailable, detect_bounds

    out: dict[str, Any] = {}
    # The filesystem the test daemons keep RESULTS_DIR on (tests/support/server.py).
    with tempfile.TemporaryDirectory(prefix="bench-journal-") as root:
        out["journal_accept"] = summary(journal_accept(Path(root)))
    trials = max(4, int(12 * scale))
    for mechanism in ("watchdog", "cgroup_v1"):
        poller = Poller()
        try:
            detect_bounds(poller, mechanism).close()  # type: ignore[arg-type]
        except BoundsUnavailable:
            continue
        finally:
            poller.close()
        over = [overshoot_once(mechanism)[0] for _ in range(trials)]
        out[f"overshoot_{mechanism}_mib"] = _spread(over)
        out[f"overshoot_{mechanism}_pool_mib"] = _spread(pool_overshoot(mechanism, trials))
    return out


POOL_OVER_LIMIT = """
import multiprocessing
def touch(mb):
    block = b"x" * (mb << 20)
    return len(block)
def handler(event):
    with multiprocessing.Pool(4) as pool:
        return sum(pool.map(touch, [200] * 4))
"""


def pool_overshoot(mechanism: str, trials: int) -> list[float]:
    """MiB past a 256 MiB limit that four processes together held when a daemon stopped
    them (its peak_memory_mb: for the watchdog, measured with the run frozen)."""
    server = start_server(
        {"RUN_BOUNDS_MECHANISM": mechanism, "MEMORY_LIMIT_MB": "256", "WARM_POOL_SIZE": "0"}
    )
    over = []
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            for n in range(trials):
                body = {"execution_id": f"exec_bench_pool_{n}", "language": "python", "code": POOL_OVER_LIMIT}
                doc = client.post("/execute", params={"wait": "true"}, json=body).json()
                if doc.get("termination_reason") != "memory_limit":
                    raise RuntimeError(f"the pool was not stopped for memory: {doc.get('status')}")
                over.append(doc["metrics"]["peak_memory_mb"] - 256)
    finally:
        stop_server(server)
        shutil.rmtree(server.workspace.parent, ignore_errors=True)
    return over


def _spread(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "median": round(statistics.median(values), 1), "max": round(max(values), 1)}


# ---------------------------------------------------------------------- report
def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else float("nan")


def build_report(bare: dict[str, Any], ex: dict[str, Any], live: dict[str, Any]) -> dict[str, Any]:
    base = bare["python3 -c pass"]["median_ms"]
    rows = []
    for language, binary in BINARY.items():
        bare_hello = bare[f"{binary} hello"]
        bwrap_hello = bare[f"bwrap {binary} hello"]
        for path in ("cold", "warm"):
            s = ex[path][language]
            rows.append(
                {
                    "language": language,
                    "path": path,
                    **s,
                    "ratio_to_bare": ratio(s["median_ms"], bare_hello["median_ms"]),
                    "ratio_to_python_pass": ratio(s["median_ms"], base),
                    "over_bwrap_ms": round(s["median_ms"] - bwrap_hello["median_ms"], 3),
                }
            )
    warm_py = ex["warm"]["python"]
    cold_over = {r["language"]: r["over_bwrap_ms"] for r in rows if r["path"] == "cold"}
    fp = ex["footprint"]
    targets = {
        "python warm median < bare python3 -c pass": {
            "value": ratio(warm_py["median_ms"], base),
            "limit": "< 1.0",
            "met": warm_py["median_ms"] < base,
        },
        "python warm p95 <= 2x bare median": {
            "value": ratio(warm_py["p95_ms"], base),
            "limit": "<= 2.0",
            "met": warm_py["p95_ms"] <= 2 * base,
        },
        "cold overhead over bare bwrap+interpreter <= 5 ms": {
            "value": cold_over,
            "limit": "<= 5 ms each",
            "met": all(v <= 5.0 for v in cold_over.values()),
        },
        "callback within 20 ms of run end (median, p95)": {
            "value": {k: [ex[k]["median_ms"], ex[k]["p95_ms"]] for k in ("callback_cold", "callback_warm")},
            "limit": "<= 20 ms",
            "met": all(
                ex[k]["p95_ms"] <= 20 and not ex[k]["missing"] for k in ("callback_cold", "callback_warm")
            ),
        },
        "python warm median <= 0.5 x bare python3 -c pass (journal write included)": {
            "value": ratio(warm_py["median_ms"], base),
            "limit": "<= 0.5",
            "met": warm_py["median_ms"] <= 0.5 * base,
        },
        "daemon idle RSS <= 60 MiB": {
            "value": round(fp["idle"]["rss_bytes"] / 2**20, 1),
            "limit": "<= 60 MiB",
            "met": fp["idle"]["rss_bytes"] <= 60 * 2**20,
        },
        f"no RSS / fd growth over {LOAD_EXECUTIONS} executions": {
            "value": {"rss_growth_kib": fp["rss_growth_bytes"] // 1024, "fd_growth": fp["fd_growth"]},
            "limit": "RSS growth < 1 MiB (noise), fd growth 0",
            "met": fp["rss_growth_bytes"] < 2**20 and fp["fd_growth"] <= 0,
        },
    }
    added = live["stream_vs_wait_python_warm"]["added_median_ms"]
    targets["?stream=true adds <= 1 ms to a warm python hello (median)"] = {
        "value": added,
        "limit": "<= 1 ms",
        "met": added <= 1.0,
    }
    return {"bare": bare, "executor": ex, "live_output": live, "rows": rows, "targets": targets}


def print_report(report: dict[str, Any], meta: dict[str, Any]) -> None:
    bare, ex = report["bare"], report["executor"]
    print(
        f"\n{meta['host']}  {meta['cpus']} CPUs  commit {meta['commit']}  load before: "
        f"{meta['load_before']}  after: {meta['load_after']}  duration {meta['duration_s']:.0f} s"
    )
    print("\nBare runs (fork+exec from this process to exit)")
    print(f"  {'command':<28}{'median':>9}{'p95':>9}")
    for name, s in bare.items():
        print(f"  {name:<28}{s['median_ms']:>8.2f} {s['p95_ms']:>8.2f}")
    print("\nExecutor end to end: POST /execute?wait=true -> response (ms)")
    print(f"  {'language':<11}{'path':<6}{'median':>8}{'p95':>8}{'/bare':>8}{'/py pass':>9}{'-bwrap':>8}")
    for r in report["rows"]:
        print(
            f"  {r['language']:<11}{r['path']:<6}{r['median_ms']:>8.2f}{r['p95_ms']:>8.2f}"
            f"{r['ratio_to_bare']:>8.2f}{r['ratio_to_python_pass']:>9.2f}{r['over_bwrap_ms']:>+8.2f}"
        )
    b2b = ex["back_to_back_python"]
    print(
        f"  python back-to-back x{b2b['n']}: median {b2b['median_ms']:.2f}  p95 {b2b['p95_ms']:.2f}  "
        f"(pool hits {b2b['pool_hits']:.0f}, misses {b2b['pool_misses']:.0f} over the whole daemon run)"
    )
    print("\nResult callback: arrival at the control plane - handler return (ms)")
    for k in ("callback_cold", "callback_warm"):
        s = ex[k]
        print(
            f"  {k[9:]:<6} median {s['median_ms']:.2f}  p95 {s['p95_ms']:.2f}  max {s['max_ms']:.2f}"
            f"  (n={s['n']}, missing {s['missing']})"
        )
    fp = ex["footprint"]
    print(
        f"\nDaemon footprint (pool on; result history capped at {meta['retention_count']}, "
        f"filled by {meta['warmup_executions']} executions before 'after_warmup')"
    )
    for k in ("idle", "after_warmup", f"after_{LOAD_EXECUTIONS}"):
        print(f"  {k:<16} RSS {fp[k]['rss_bytes'] / 2**20:6.1f} MiB   fds {fp[k]['fds']}")
    print(
        f"  helper processes (not the daemon, not sandboxes) idle: "
        f"{fp['idle']['helper_rss_bytes'] / 2**20:.1f} MiB"
    )
    print(
        f"  pool at end: {fp['pool_at_end']['warm_sandboxes']} sandbox(es), "
        f"{(fp['pool_at_end']['memory_bytes'] or 0) / 2**20:.1f} MiB"
    )
    live_output.print_report(report["live_output"])
    print(
        "\nIsolation levels: python hello world, POST /execute?wait=true (ms); "
        f"Landlock ABI {meta['landlock_abi']}"
    )
    print(f"  {'level':<14}{'cold median':>12}{'p95':>8}{'warm median':>13}{'p95':>8}")
    for level, got in report["levels"].items():
        if "unavailable" in got:
            print(f"  {level:<14}unavailable here: {got['unavailable']}")
            continue
        cold, warm = got["cold"], got["warm"]
        print(
            f"  {level:<14}{cold['median_ms']:>12.2f}{cold['p95_ms']:>8.2f}"
            f"{warm['median_ms']:>13.2f}{warm['p95_ms']:>8.2f}"
        )
    bounds = ex.get("bounds", {})
    if bounds:
        print("\nAcceptance journal and whole-run memory bounds")
        ja, jd = bounds["journal_accept"], ex["journal_in_daemon"]
        print(
            f"  journal accept (write + fdatasync): median {ja['median_ms']:.3f} ms  "
            f"p95 {ja['p95_ms']:.3f} ms  (n={ja['n']}); in the warm daemon: mean {jd['mean_ms']:.3f} ms "
            f"(n={jd['n']:.0f})"
        )
        for key, o in bounds.items():
            if key.startswith("overshoot_"):
                who = "4 processes" if key.endswith("_pool_mib") else "1 process "
                mechanism = key[10:].removesuffix("_mib").removesuffix("_pool")
                print(
                    f"  {mechanism:<9} {who} allocating flat out, past a 256 MiB limit when stopped: "
                    f"median {o['median']:.0f} MiB, max {o['max']:.0f} MiB (n={o['n']:.0f})"
                )
    print("\nTargets")
    for name, t in report["targets"].items():
        print(f"  [{'met' if t['met'] else 'MISSED'}] {name}: {t['value']} ({t['limit']})")


# ---------------------------------------------------------------------- dependency sync
def measure_dependency_sync(scale: float) -> dict[str, Any]:
    """benchmarks/dependency_sync.py: installs, merges, no-op re-syncs, the proxy's cost."""
    import asyncio

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    return dict(asyncio.run(dependency_sync.main(max(3, round(9 * scale)))))


def print_dependency_sync(deps: dict[str, Any]) -> None:
    print("\nDependency sync (whole DependencyManager.sync, loopback index, real pip in bwrap; ms)")
    for name, s in deps.items():
        if name != "proxy_cost_ms":
            print(f"  {name:<40} median {s['median_ms']:8.2f}  min {s['min_ms']:8.2f}  (n={s['n']})")
    cost = deps["proxy_cost_ms"]
    print(f"  the egress proxy's cost, one-wheel install: cold {cost['cold']:+.1f}, warm {cost['warm']:+.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a third of the samples (a smoke run)")
    parser.add_argument("--out", type=Path, default=RESULTS / "latest.json")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("benchmarks/run.py needs root (it runs the daemon like the tests do)", file=sys.stderr)
        return 2
    scale = 1 / 3 if args.quick else 1.0
    started = time.monotonic()
    load_before = os.getloadavg()
    import tempfile

    workspace = Path(tempfile.mkdtemp(prefix="bench-ws-", dir="/tmp"))
    workspace.chmod(0o755)
    os.chown(workspace, SANDBOX_UID, SANDBOX_UID)
    try:
        print("bare interpreters and bwrap ...", flush=True)
        bare = measure_bare(workspace, scale)
    finally:
        shutil.rmtree(workspace, ignore_errors=True)
    cp = FakeControlPlaneProcess()
    try:
        print("executor: cold daemon, warm daemon, 1000 executions ...", flush=True)
        ex = measure_executor(cp, scale)
        print("live output: stream vs wait, stdout to client, slow clients ...", flush=True)
        live = live_output.measure(cp.url, cp.records, scale)
        print("executor: python hello world at each isolation level ...", flush=True)
        levels = measure_levels(cp, scale)
    finally:
        cp.close()
    print("dependency sync: one-wheel installs through the egress proxy and without it ...", flush=True)
    deps = measure_dependency_sync(scale)
    print("journal and memory bounds ...", flush=True)
    ex["bounds"] = measure_bounds_and_journal(scale)
    report = build_report(bare, ex, live) | {"levels": levels, "dependency_sync": deps}
    commit = subprocess.run(
        ["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True, text=True
    ).stdout.strip()
    from sandbox_executor.bootstrap.confine import landlock_abi

    meta = {
        "commit": commit,
        "landlock_abi": landlock_abi(),
        "retention_count": RETENTION,
        "warmup_executions": WARMUP_EXECUTIONS,
        "host": platform.node(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "duration_s": round(time.monotonic() - started, 1),
        "quick": args.quick,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    print_report(report, meta)
    print_dependency_sync(deps)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, **report}, indent=2) + "\n")
    print(f"\nwritten: {args.out.relative_to(REPO) if args.out.is_relative_to(REPO) else args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
