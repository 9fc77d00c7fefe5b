"""The warm pool's bookkeeping: hits and misses, refills, invalidation, dead and stale
sandboxes, back-off, closing. Real sandboxes from the real factory (bare interpreters,
which start in milliseconds); a failing starter where the host must refuse."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from sandbox_executor.config import Settings
from sandbox_executor.host import HostProfile
from sandbox_executor.models import Language
from sandbox_executor.pool import PoolStats, WarmPool
from sandbox_executor.sandbox import Sandbox, SandboxFactory
from sandbox_executor.spawner import Spawner


@pytest.fixture
def pool_settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(disable_bwrap=True, warm_pool_size=1)


@pytest.fixture
async def factory(pool_settings: Settings) -> AsyncIterator[SandboxFactory]:
    made = SandboxFactory(
        pool_settings, HostProfile.probe(pool_settings), Spawner(pool_settings.python_binary)
    )
    yield made
    await made.aclose()


@pytest.fixture
async def pool(factory: SandboxFactory, pool_settings: Settings) -> AsyncIterator[WarmPool]:
    made = WarmPool(factory, pool_settings, refill_delay=0.0)
    await made.start()
    yield made
    await made.aclose()


async def _until(predicate: Callable[[], bool], seconds: float = 10.0) -> None:
    async with asyncio.timeout(seconds):
        while not predicate():
            await asyncio.sleep(0.005)


async def test_pinned_python_is_warm_and_taken_once(pool: WarmPool) -> None:
    assert await pool.wait_ready("python")
    sandbox = pool.take("python")
    assert sandbox is not None and sandbox.alive and sandbox.interpreter_started
    assert pool.take("python") is None  # its successor starts only after the run ends
    stats = pool.stats()
    assert isinstance(stats, PoolStats)
    assert (stats.hits, stats.misses, stats.warm_sandboxes) == (1, 1, 0)
    await sandbox.discard()
    assert await pool.wait_ready("python")


async def test_a_miss_keeps_the_language_warm_from_then_on(pool: WarmPool) -> None:
    assert pool.take("shell") is None
    assert await pool.wait_ready("shell")
    stats = pool.stats()
    assert stats.languages.get("shell") == 1 and stats.ready.get("shell") == 1
    assert stats.memory_bytes > 1 << 20  # a live interpreter, counted from /proc


async def test_invalidate_replaces_every_waiting_sandbox(pool: WarmPool) -> None:
    assert await pool.wait_ready("python")
    old = pool.waiting("python")
    await pool.invalidate()
    assert all(not s.alive for s in old) and pool.stats().generation == 1
    assert await pool.wait_ready("python")
    assert pool.waiting("python")[0] not in old


async def test_a_sandbox_that_died_waiting_is_never_handed_out(pool: WarmPool) -> None:
    assert await pool.wait_ready("python")
    (victim,) = pool.waiting("python")
    os.killpg(victim.pid, 9)
    await _until(lambda: not victim.alive)
    taken = pool.take("python")
    assert taken is not victim
    if taken is not None:
        await taken.discard()


async def test_a_workspace_swapped_under_a_waiting_sandbox_makes_it_stale(
    pool: WarmPool, pool_settings: Settings
) -> None:
    assert await pool.wait_ready("python")
    (stale,) = pool.waiting("python")
    workspace = Path(pool_settings.workspace_dir)
    shutil.rmtree(workspace)
    workspace.mkdir()
    assert pool.take("python") is None
    await _until(lambda: not stale.alive)


class _Refusing:
    def __init__(self) -> None:
        self.calls = 0

    async def start(self, language: Language) -> Sandbox:
        self.calls += 1
        raise OSError("no bwrap here")


async def test_failing_starts_back_off(pool_settings: Settings) -> None:
    starter = _Refusing()
    pool = WarmPool(starter, pool_settings)
    await pool.start()
    try:
        await _until(lambda: starter.calls >= 1)
        await asyncio.sleep(0.3)
        assert starter.calls == 1  # the next try waits 0.5 s, then 1 s, 2 s...
        await _until(lambda: starter.calls >= 2, seconds=2)
        assert pool.take("python") is None and pool.stats().starting == 0
    finally:
        await pool.aclose()


async def test_size_zero_starts_nothing(factory: SandboxFactory, pool_settings: Settings) -> None:
    pool = WarmPool(factory, pool_settings, size=0)
    await pool.start()
    await asyncio.sleep(0.05)
    assert pool.take("python") is None and not pool.enabled
    assert pool.stats() == PoolStats(0, 0, {}, {}, 0, 0, 0, 0)
    await pool.aclose()


async def test_close_kills_the_waiting_and_stops_handing_out(
    factory: SandboxFactory, pool_settings: Settings
) -> None:
    pool = WarmPool(factory, pool_settings, pinned=("python", "shell"))
    await pool.start()
    assert await pool.wait_ready("python") and await pool.wait_ready("shell")
    waiting = pool.waiting()
    await pool.aclose()
    assert len(waiting) == 2 and all(not s.alive for s in waiting)
    assert pool.take("python") is None
