"""What the egress proxy costs a one-wheel install: today's pip sandbox (host network)
against the same sandbox without network behind relay + proxy, and with the default
wheels-only options (``--only-binary :all:`` and the debug ``--log``). Runs interleaved,
real pip in real bwrap against a loopback PEP 503 index.

Usage: .venv/bin/python benchmarks/egress_cost.py [--repeat N]
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sandbox_executor.config import Settings
from sandbox_executor.dependencies import DependencyManager, SyncRequest
from tests.support.egress_pip import ProxiedPipRunner, socket_dir
from tests.support.local_index import LocalIndex

VARIANTS = ("host_network", "proxy", "proxy_wheels_only")


def new_dir(prefix: str, owner: bool = False) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    if owner and os.geteuid() == 0:
        os.chown(path, 65534, 65534)
    return path


async def one_install(variant: str, index: LocalIndex, runtime_root: Path, warm_cache: Path | None) -> float:
    base = new_dir("egress-bench-")
    (base / "ws").mkdir()
    cache = warm_cache or new_dir("egress-bench-cache-", owner=True)
    settings = Settings(
        workspace_path=str(base / "ws"),
        sandbox_venv_path=base / "venv",
        results_dir=base / "results",
        pip_cache_dir=cache,
        dependency_allow_sdist=variant != "proxy_wheels_only",
    )
    manager = DependencyManager(settings)
    if variant != "host_network":
        manager.pip = ProxiedPipRunner(settings, socket_dir(base))
    manager.pip.runtime_root = runtime_root
    request = SyncRequest(python_package_index_url=index.url, dependencies=["alpha"])
    try:
        started = time.perf_counter()
        await manager.sync(request)
        return (time.perf_counter() - started) * 1000
    finally:
        await manager.aclose()
        shutil.rmtree(base)
        if warm_cache is None:
            shutil.rmtree(cache)


async def main(repeat: int) -> dict[str, dict[str, float]]:
    runtime_root = new_dir("egress-bench-pip-")
    warm = new_dir("egress-bench-warm-", owner=True)
    samples: dict[str, list[float]] = {}
    with LocalIndex() as index:
        index.add_wheel("alpha", "1.0", {"alpha.py": "VALUE = 1\n"})
        for variant in VARIANTS:  # warm-up: pip's compiled copy, the warm cache, page cache
            await one_install(variant, index, runtime_root, warm)
        for _ in range(repeat):
            for variant in VARIANTS:
                for cache_kind, cache in (("cold", None), ("warm", warm)):
                    ms = await one_install(variant, index, runtime_root, cache)
                    samples.setdefault(f"{variant}_{cache_kind}_cache", []).append(ms)
    shutil.rmtree(runtime_root)
    shutil.rmtree(warm)
    return {
        name: {"median_ms": round(statistics.median(v), 1), "min_ms": round(min(v), 1), "n": len(v)}
        for name, v in samples.items()
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    print(json.dumps(asyncio.run(main(args.repeat)), indent=2))
