"""Hello world through the engine, in-process, next to the same interpreter run bare.

For python, node and bash: N runs of a hello-world through ``Engine.execute`` (a fresh
sandbox each time: bwrap, namespaces, seccomp, rlimits, the uid drop when root, the
bootstrap, the launch message, output capture, the artifact scan), and N runs of the bare
interpreter as a subprocess (``/usr/bin/python3 -c``, ``node -e``, ``bash -c``) with the
same minimal environment. Wall time of each run, as the caller sees it. No warm pool: every
engine run starts its sandbox.

Prints medians, p95 and the ratios engine/bare.

Usage: .venv/bin/python benchmarks/engine_hello.py [--count 50] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from sandbox_executor.config import Settings  # noqa: E402
from sandbox_executor.engine import Engine  # noqa: E402
from sandbox_executor.models import ExecuteRequest  # noqa: E402

CASES: dict[str, dict[str, Any]] = {
    "python": {
        "code": 'def handler(event):\n    print("hello")\n    return "hello"\n',
        "bare": ["/usr/bin/python3", "-c", 'print("hello")'],
    },
    "javascript": {
        "code": 'function handler(event) {\n  console.log("hello");\n  return "hello";\n}\n',
        "bare": ["/usr/bin/node", "-e", 'console.log("hello")'],
    },
    "shell": {
        "code": "echo hello\n",
        "bare": ["/bin/bash", "-c", "echo hello"],
    },
}


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# The sandbox starts from a cleared environment; so does the bare run. (This host sets
# NODE_EXTRA_CA_CERTS, which alone makes a bare node ~40 ms slower.)
BARE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/tmp"}


def bare_runs(argv: list[str], count: int) -> list[float]:
    times = []
    for _ in range(count + 1):
        started = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, check=True, env=BARE_ENV)
        times.append(time.perf_counter() - started)
        assert proc.stdout.strip() == b"hello", proc.stdout
    return times[1:]  # the first run warms the page cache


async def engine_runs(engine: Engine, language: str, code: str, count: int) -> list[float]:
    times = []
    for i in range(count + 1):
        request = ExecuteRequest(execution_id=f"bench_{language}_{i}", code=code, language=language)  # type: ignore[arg-type]
        started = time.perf_counter()
        result = await engine.execute(request)
        times.append(time.perf_counter() - started)
        assert result.status == "success" and result.stdout == "hello\n", result
    return times[1:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.count < 1:
        parser.error("--count must be positive")

    workspace = tempfile.mkdtemp(prefix="bench-ws-")
    settings = Settings(workspace_path=workspace, warm_pool_size=0)
    if settings.runs_as_root:
        os.chown(workspace, *settings.sandbox_ids())
    engine = Engine(settings)
    rows: dict[str, dict[str, float]] = {}
    try:
        for language, case in CASES.items():
            engine_t = asyncio.run(engine_runs(engine, language, case["code"], args.count))
            bare_t = bare_runs(case["bare"], args.count)
            rows[language] = {
                "engine_median_ms": statistics.median(engine_t) * 1000,
                "engine_p95_ms": pct(engine_t, 0.95) * 1000,
                "bare_median_ms": statistics.median(bare_t) * 1000,
                "bare_p95_ms": pct(bare_t, 0.95) * 1000,
            }
    finally:
        shutil.rmtree(workspace, ignore_errors=True)

    print(
        f"hello world, N={args.count} per cell, wall ms; engine = Engine.execute in-process "
        f"(uid {settings.sandbox_ids()[0]}, seccomp {'on' if engine.seccomp_active else 'off'}, "
        f"no warm pool); {os.cpu_count()} CPUs"
    )
    header = f"{'language':<11} {'engine med':>10} {'engine p95':>10} {'bare med':>9} {'bare p95':>9} "
    header += f"{'med ratio':>9} {'overhead':>9}"
    print(header)
    print("-" * len(header))
    for language, r in rows.items():
        ratio = r["engine_median_ms"] / r["bare_median_ms"]
        overhead = r["engine_median_ms"] - r["bare_median_ms"]
        r["median_ratio"] = ratio
        print(
            f"{language:<11} {r['engine_median_ms']:10.2f} {r['engine_p95_ms']:10.2f} "
            f"{r['bare_median_ms']:9.2f} {r['bare_p95_ms']:9.2f} {ratio:8.2f}x {overhead:+8.2f}"
        )
    if args.json:
        args.json.write_text(json.dumps({"count": args.count, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
