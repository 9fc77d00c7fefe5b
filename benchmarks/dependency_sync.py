"""Time dependency syncs: a one-wheel install (cold and warm pip cache), a merge that adds
one wheel, and a no-op re-sync. Real pip in real bwrap against a loopback PEP 503 index.

Usage: .venv/bin/python benchmarks/dependency_sync.py [--repeat N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sandbox_executor.config import Settings
from sandbox_executor.dependencies import DependencyManager, SyncRequest
from tests.support.local_index import LocalIndex


def new_base() -> Path:
    base = Path(tempfile.mkdtemp(prefix="deps-bench-"))
    base.chmod(0o755)
    (base / "ws").mkdir()
    return base


def settings_for(base: Path, cache: Path | None = None) -> Settings:
    return Settings(
        workspace_path=str(base / "ws"),
        sandbox_venv_path=base / "venv",
        results_dir=base / "results",
        pip_cache_dir=cache,
    )


def new_cache() -> Path:
    cache = Path(tempfile.mkdtemp(prefix="deps-bench-cache-"))
    cache.chmod(0o755)
    if os.geteuid() == 0:
        os.chown(cache, 65534, 65534)
    return cache


async def timed(fn: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    await fn()
    return (time.perf_counter() - started) * 1000


def summary(samples: list[float]) -> dict[str, float]:
    return {
        "median_ms": round(statistics.median(samples), 2),
        "min_ms": round(min(samples), 2),
        "max_ms": round(max(samples), 2),
        "n": len(samples),
    }


async def main(repeat: int) -> dict[str, dict[str, float]]:
    results: dict[str, list[float]] = {
        "first_sync_fresh_store_one_wheel": [],  # includes compiling pip's copy once
        "install_one_wheel_cold_pip_cache": [],
        "install_one_wheel_warm_pip_cache": [],
        "merge_add_one_wheel": [],
        "noop_resync": [],
    }
    with LocalIndex() as index:
        index.add_wheel("alpha", "1.0", {"alpha.py": "VALUE = 1\n"})
        index.add_wheel("gamma", "1.0", {"gamma.py": "VALUE = 2\n"})

        def request(deps: list[str], mode: str = "replace") -> SyncRequest:
            return SyncRequest(python_package_index_url=index.url, dependencies=deps, sync_mode=mode)  # type: ignore[arg-type]

        for _ in range(max(1, repeat // 3)):
            base = new_base()
            manager = DependencyManager(settings_for(base))
            results["first_sync_fresh_store_one_wheel"].append(
                await timed(lambda m=manager: m.sync(request(["alpha"])))
            )
            shutil.rmtree(base)

        base = new_base()
        await DependencyManager(settings_for(base)).sync(request(["alpha"]))  # warm-up
        for i in range(repeat):
            cache = new_cache()
            manager = DependencyManager(settings_for(base, cache))
            deps = ["gamma"] if i % 2 == 0 else ["alpha"]
            results["install_one_wheel_cold_pip_cache"].append(
                await timed(lambda m=manager, d=deps: m.sync(request(d)))
            )
            other = ["alpha"] if deps == ["gamma"] else ["gamma"]
            results["install_one_wheel_warm_pip_cache"].append(
                await timed(lambda m=manager, d=other: m.sync(request(d)))
            )
            results["merge_add_one_wheel"].append(
                await timed(lambda m=manager, d=deps: m.sync(request(d, "merge")))
            )
            for _ in range(20):
                results["noop_resync"].append(
                    await timed(lambda m=manager: m.sync(request(["alpha", "gamma"])))
                )
            shutil.rmtree(cache)
        shutil.rmtree(base)
    return {name: summary(samples) for name, samples in results.items()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    print(json.dumps(asyncio.run(main(args.repeat)), indent=2))
