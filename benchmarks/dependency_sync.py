"""Time dependency syncs: a one-wheel install (cold and warm pip cache), a merge that adds
one wheel, a no-op re-sync, and what the egress proxy costs a one-wheel install. Real pip in
real bwrap against a loopback PEP 503 index; the whole ``DependencyManager.sync``.

The proxy's cost: the production path (pip in its own network namespace, the relay, the
per-install proxy, ``--only-binary :all:`` and the debug log) against pip as it ran before
the proxy existed (the host's network shared, nothing else changed), interleaved. The second
is a runner private to this benchmark (:class:`HostNetworkPipRunner`): the daemon has no
such mode.

Usage: .venv/bin/python benchmarks/dependency_sync.py [--repeat N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sandbox_executor.config import Settings
from sandbox_executor.dependencies import DependencyManager, SyncRequest
from sandbox_executor.dependencies.egress.route import Route
from sandbox_executor.dependencies.pip_sandbox import PipJob, PipRunner
from sandbox_executor.host import HostProfile
from sandbox_executor.spawner import Spawner
from tests.support.local_index import LocalIndex


class HostNetworkPipRunner(PipRunner):
    """Benchmark only: pip without the egress proxy, on the host's network (the old way)."""

    @contextlib.asynccontextmanager
    async def egress(self, job: PipJob) -> AsyncIterator[tuple[Any, Route]]:
        yield _NoProxy(), Route(proxy_url="")

    def command(self, job: PipJob, route: Route) -> tuple[list[str], list[int], dict[str, str], str | None]:
        argv, fds, env, cwd = super().command(job, route)
        at = argv.index("--proxy")
        del argv[at : at + 2]
        # bwrap's --setenv NAME VALUE of the (empty) proxy variables.
        for name, _ in route.environment():
            at = argv.index(name)
            del argv[at - 1 : at + 2]
        argv.insert(argv.index("--unshare-user") + 1, "--share-net")
        return argv, fds, env, cwd


class _NoProxy:
    denied: tuple[Any, ...] = ()


class Shared:
    """What a daemon has once and every sync reuses: the host profile and pip's spawner."""

    def __init__(self) -> None:
        settings = Settings()
        self.host = HostProfile.probe(settings)
        self.spawner = Spawner(settings.python_binary)

    def manager(
        self, settings: Settings, runtime_root: Path | None = None, runner: type[PipRunner] = PipRunner
    ) -> DependencyManager:
        root = runtime_root or Path(str(settings.sandbox_venv_path) + ".d")
        pip = runner(settings, runtime_root=root, host=self.host, spawner=self.spawner)
        return DependencyManager(settings, pip=pip, host=self.host)


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


async def syncs(index: LocalIndex, repeat: int, shared: Shared) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {
        "first_sync_fresh_store_one_wheel": [],  # includes compiling pip's copy once
        "install_one_wheel_cold_pip_cache": [],
        "install_one_wheel_warm_pip_cache": [],
        "merge_add_one_wheel": [],
        "noop_resync": [],
    }

    def request(deps: list[str], mode: str = "replace") -> SyncRequest:
        return SyncRequest(python_package_index_url=index.url, dependencies=deps, sync_mode=mode)  # type: ignore[arg-type]

    for _ in range(max(1, repeat // 3)):
        base = new_base()
        manager = shared.manager(settings_for(base))
        results["first_sync_fresh_store_one_wheel"].append(
            await timed(lambda m=manager: m.sync(request(["alpha"])))
        )
        shutil.rmtree(base)

    base = new_base()
    await shared.manager(settings_for(base)).sync(request(["alpha"]))  # warm-up
    for i in range(repeat):
        cache = new_cache()
        manager = shared.manager(settings_for(base, cache))
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
            results["noop_resync"].append(await timed(lambda m=manager: m.sync(request(["alpha", "gamma"]))))
        shutil.rmtree(cache)
    shutil.rmtree(base)
    return results


async def one_install(
    index: LocalIndex, proxied: bool, runtime_root: Path, warm_cache: Path | None, shared: Shared
) -> float:
    base = new_base()
    cache = warm_cache or new_cache()
    settings = settings_for(base, cache)
    manager = shared.manager(settings, runtime_root, PipRunner if proxied else HostNetworkPipRunner)
    try:
        return await timed(
            lambda: manager.sync(SyncRequest(python_package_index_url=index.url, dependencies=["alpha"]))
        )
    finally:
        shutil.rmtree(base)
        if warm_cache is None:
            shutil.rmtree(cache)


async def proxy_cost(index: LocalIndex, repeat: int, shared: Shared) -> dict[str, list[float]]:
    """One-wheel installs with and without the proxy, interleaved (cold and warm pip cache)."""
    runtime_root = new_base()
    warm = new_cache()
    samples: dict[str, list[float]] = {}
    try:
        for proxied in (True, False):  # warm-up: pip's compiled copy, the warm cache, page cache
            await one_install(index, proxied, runtime_root, warm, shared)
        for _ in range(repeat):
            for proxied in (True, False):
                for kind, cache in (("cold", None), ("warm", warm)):
                    path = "proxy" if proxied else "host_network"
                    ms = await one_install(index, proxied, runtime_root, cache, shared)
                    samples.setdefault(f"one_wheel_{path}_{kind}_pip_cache", []).append(ms)
    finally:
        shutil.rmtree(runtime_root)
        shutil.rmtree(warm)
    return samples


async def main(repeat: int) -> dict[str, Any]:
    with LocalIndex() as index:
        index.add_wheel("alpha", "1.0", {"alpha.py": "VALUE = 1\n"})
        index.add_wheel("gamma", "1.0", {"gamma.py": "VALUE = 2\n"})
        shared = Shared()
        try:
            samples = await syncs(index, repeat, shared)
            samples.update(await proxy_cost(index, repeat, shared))
        finally:
            await shared.spawner.aclose()
    report: dict[str, Any] = {name: summary(values) for name, values in samples.items()}
    report["proxy_cost_ms"] = {
        kind: round(
            report[f"one_wheel_proxy_{kind}_pip_cache"]["median_ms"]
            - report[f"one_wheel_host_network_{kind}_pip_cache"]["median_ms"],
            2,
        )
        for kind in ("cold", "warm")
    }
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    print(json.dumps(asyncio.run(main(args.repeat)), indent=2))
