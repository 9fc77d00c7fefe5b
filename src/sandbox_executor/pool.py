"""Pre-started sandboxes: the warm pool.

A :class:`~sandbox_executor.sandbox.Sandbox` is started before it knows its request (bwrap
+ interpreter + bootstrap, blocked reading its input pipe). The pool keeps
``WARM_POOL_SIZE`` of them waiting for every recently used language, started by the same
:class:`~sandbox_executor.sandbox.SandboxFactory` as the cold path (same argv, mounts,
limits, seccomp, uid: only the moment differs), and is the engine's warm source: the
engine calls :meth:`WarmPool.take` before a cold start. Each serves exactly one execution.

Rules it keeps:

* ``take()`` is synchronous and cheap (a dict lookup and two syscalls); it never hands out a
  sandbox that died, belongs to an older generation, or was started against a different
  workspace or dependency directory than the ones on disk now.
* The replacement starts in the background once the taken sandbox's run has ended, never
  on the hand-off path (spawning blocks the event loop for a few ms).
* ``invalidate()`` (a dependency sync, a configuration change) discards every waiting
  sandbox and any start in flight.
* No idle CPU: a waiting interpreter is blocked in read(2); the pool itself has no
  periodic work apart from one timer per warm language that expires it after a long idle.
* Memory is reported: the RSS of every waiting sandbox's processes, in ``stats()`` (for
  /health and the Prometheus gauges of /metrics).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from .config import Settings
from .metrics import POOL_DISCARDS, POOL_TAKES
from .models import Language
from .proctree import has_exited, process_tree, rss_bytes
from .sandbox import Sandbox

log = structlog.get_logger(__name__)

# Languages kept warm from the start, and never expired for idleness: the common case.
DEFAULT_PINNED: tuple[Language, ...] = ("python",)
# A language not asked for in this long stops being kept warm (its memory is given back).
DEFAULT_IDLE_SECONDS = 900.0
# After the taken sandbox's run ends, wait this long before starting its replacement, so
# that spawning it (and its boot, on a 2-core machine) does not compete with the result's
# own processing, answer and callback (a few ms of work)...
DEFAULT_REFILL_DELAY_SECONDS = 0.02
# ...unless requests for the language recently found the pool empty (a burst): then the
# replacement starts at once, since a half-booted sandbox still beats a cold start.
BURST_WINDOW_SECONDS = 10.0
# A waiting sandbox that dies on its own (or fails to start) backs off its language's
# refills: 0.5 s, 1 s, 2 s ... up to a minute, so a broken host does not spin.
_BACKOFF_FIRST = 0.5
_BACKOFF_MAX = 60.0


class SandboxStarter(Protocol):
    """Starts a sandbox that waits for its launch message (sandbox.SandboxFactory)."""

    async def start(self, language: Language) -> Sandbox: ...


@dataclass(frozen=True)
class PoolStats:
    """What /health and /metrics report of the pool."""

    warm_sandboxes: int
    memory_bytes: int
    languages: dict[Language, int]
    ready: dict[Language, int]
    starting: int
    hits: int
    misses: int
    generation: int


@dataclass
class _Lane:
    """The pool's state for one language."""

    waiting: deque[_Warm] = field(default_factory=deque)
    starting: int = 0
    last_used: float = 0.0
    pinned: bool = False
    failures: int = 0
    last_miss: float = float("-inf")
    refill_timer: asyncio.TimerHandle | None = None
    expiry_timer: asyncio.TimerHandle | None = None


@dataclass
class _Warm:
    sandbox: Sandbox
    generation: int
    fingerprint: tuple[Any, ...]
    started_at: float
    # Its processes, once its interpreter is up (a waiting tree no longer changes), so
    # memory reports read a few status files instead of walking /proc each time.
    pids: list[int] | None = None


class WarmPool:
    """Keeps ``settings.warm_pool_size`` started sandboxes per recently used language."""

    def __init__(
        self,
        sandboxes: SandboxStarter,
        settings: Settings,
        *,
        pinned: Iterable[Language] = DEFAULT_PINNED,
        idle_seconds: float = DEFAULT_IDLE_SECONDS,
        refill_delay: float = DEFAULT_REFILL_DELAY_SECONDS,
        size: int | None = None,
        replace: bool = True,
    ) -> None:
        """``size`` overrides ``settings.warm_pool_size`` (sandboxes kept per language);
        ``replace=False`` makes a one-shot pool that starts no successor after a take."""
        self.sandboxes = sandboxes
        self.settings = settings
        self.size = settings.warm_pool_size if size is None else size
        self.replace = replace
        self.idle_seconds = idle_seconds
        self.refill_delay = refill_delay
        self._pinned = tuple(pinned)
        self._lanes: dict[Language, _Lane] = {}
        # Sandboxes handed out and still running: their exit triggers the refill.
        self._lent: dict[int, Language] = {}
        self._generation = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._started = False
        self._closed = False
        self.hits = 0
        self.misses = 0

    # ------------------------------------------------------------------ lifecycle
    @property
    def enabled(self) -> bool:
        return self.size > 0 and not self._closed

    async def start(self) -> None:
        """Start the pinned languages' sandboxes."""
        if self._started:
            return
        self._started = True
        if self.size <= 0:
            return
        now = time.monotonic()
        for language in self._pinned:
            lane = self._lane(language)
            lane.pinned = True
            lane.last_used = now
            self._schedule_refill(language, 0.0)

    async def aclose(self) -> None:
        """Stop refilling and kill every waiting sandbox (daemon shutdown)."""
        self._closed = True
        for lane in self._lanes.values():
            for timer in (lane.refill_timer, lane.expiry_timer):
                if timer is not None:
                    timer.cancel()
            lane.refill_timer = lane.expiry_timer = None
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._discard_all("closed")

    async def invalidate(self, *_: Any) -> None:
        """Discard every waiting sandbox and start fresh ones (dependencies or config changed).

        Starts already in flight belong to the old generation and are discarded when they
        finish. Accepts and ignores arguments, so it can be any change callback.
        """
        self._generation += 1
        await self._discard_all("invalidated")
        if self._closed:
            return
        for language, lane in self._lanes.items():
            if self._wanted(lane):
                self._schedule_refill(language, 0.0)
        log.info("warm_pool_invalidated", generation=self._generation)

    # ------------------------------------------------------------------ hand-out
    def take(self, language: Language) -> Sandbox | None:
        """A started sandbox for ``language``, or None (the engine then starts one cold).

        Synchronous and cheap: it runs on the hand-off path. Marks the language as recently
        used, so a miss makes the pool keep one warm from now on.
        """
        if not self.enabled:
            return None
        lane = self._lane(language)
        self._touch(language, lane)
        fingerprint: tuple[Any, ...] | None = None
        while lane.waiting:
            warm = lane.waiting.popleft()
            if fingerprint is None:
                fingerprint = self._fingerprint()
            reason = self._unusable(warm, fingerprint)
            if reason is not None:
                POOL_DISCARDS.labels(reason).inc()
                log.info("warm_sandbox_discarded", language=language, reason=reason)
                self._spawn(warm.sandbox.discard())
                continue
            self._lent[id(warm.sandbox)] = language
            self.hits += 1
            POOL_TAKES.labels(language, "hit").inc()
            return warm.sandbox
        self.misses += 1
        if lane.refill_timer is not None or lane.starting:
            # A replacement was on its way but not there yet: requests come faster than
            # the pool refills with its polite delay. (A first use is no burst.)
            lane.last_miss = time.monotonic()
        POOL_TAKES.labels(language, "miss").inc()
        # The engine starts this request's sandbox cold; start one for the next request
        # too (it boots while this one runs).
        self._schedule_refill(language, 0.0)
        return None

    def _unusable(self, warm: _Warm, fingerprint: tuple[Any, ...]) -> str | None:
        if warm.generation != self._generation:
            return "invalidated"
        if not warm.sandbox.alive or has_exited(warm.sandbox.pid):
            return "dead"
        if warm.fingerprint != fingerprint:
            # The workspace was remounted or the dependency directory switched under a
            # waiting sandbox: it would see the old one.
            return "stale"
        return None

    def _fingerprint(self) -> tuple[Any, ...]:
        """What a started sandbox has bound at start time and that may change on disk."""
        venv = os.path.realpath(self.settings.sandbox_venv_path)
        return (_identity(str(self.settings.workspace_dir)), venv, _identity(venv))

    # ------------------------------------------------------------------ refill
    def _lane(self, language: Language) -> _Lane:
        lane = self._lanes.get(language)
        if lane is None:
            lane = self._lanes[language] = _Lane()
        return lane

    def _wanted(self, lane: _Lane) -> bool:
        return lane.pinned or time.monotonic() - lane.last_used < self.idle_seconds

    def _touch(self, language: Language, lane: _Lane) -> None:
        lane.last_used = time.monotonic()
        if lane.pinned:
            return
        if lane.expiry_timer is not None:
            lane.expiry_timer.cancel()
        lane.expiry_timer = asyncio.get_running_loop().call_later(self.idle_seconds, self._expire, language)

    def _expire(self, language: Language) -> None:
        lane = self._lane(language)
        lane.expiry_timer = None
        if self._wanted(lane) or self._closed:
            return
        while lane.waiting:
            warm = lane.waiting.popleft()
            POOL_DISCARDS.labels("idle").inc()
            self._spawn(warm.sandbox.discard())
        log.info("warm_language_expired", language=language)

    def _schedule_refill(self, language: Language, delay: float) -> None:
        lane = self._lane(language)
        if self._closed or lane.refill_timer is not None:
            return
        if not self.replace and (lane.waiting or lane.starting or self.hits or self.misses):
            return
        loop = asyncio.get_running_loop()
        lane.refill_timer = loop.call_later(delay, self._refill, language)

    def _refill(self, language: Language) -> None:
        lane = self._lane(language)
        lane.refill_timer = None
        if self._closed or not self._wanted(lane):
            return
        missing = self.size - len(lane.waiting) - lane.starting
        for _ in range(max(0, missing)):
            lane.starting += 1
            self._spawn(self._start_one(language, self._generation))

    async def _start_one(self, language: Language, generation: int) -> None:
        lane = self._lane(language)
        fingerprint = self._fingerprint()
        try:
            sandbox = await self.sandboxes.start(language)
        except Exception as exc:
            self._failed(language, f"start failed: {exc}")
            return
        finally:
            lane.starting -= 1
        if self._closed or generation != self._generation or not self._wanted(lane):
            POOL_DISCARDS.labels("invalidated").inc()
            await sandbox.discard()
            if not self._closed and self._wanted(lane):
                # Invalidated while starting: the refill that invalidate() scheduled
                # counted this start as on its way.
                self._schedule_refill(language, 0.0)
            return
        exited = sandbox.exited
        if exited.done():
            await sandbox.discard()
            self._failed(language, "exited at start")
            return
        lane.waiting.append(_Warm(sandbox, generation, fingerprint, time.monotonic()))
        exited.add_done_callback(lambda _f: self._on_exit(language, sandbox))

    def _on_exit(self, language: Language, sandbox: Sandbox) -> None:
        lane = self._lane(language)
        if self._lent.pop(id(sandbox), None) is not None:
            # The run it served is over: start its successor.
            if sandbox.used:
                lane.failures = 0
            burst = time.monotonic() - lane.last_miss < BURST_WINDOW_SECONDS
            self._schedule_refill(language, 0.0 if burst else self.refill_delay)
            return
        for warm in lane.waiting:
            if warm.sandbox is sandbox:
                # Died while waiting (OOM killer, an administrator, a broken runtime).
                lane.waiting.remove(warm)
                POOL_DISCARDS.labels("dead").inc()
                self._spawn(sandbox.discard())
                self._failed(language, "died while waiting")
                return

    def _failed(self, language: Language, why: str) -> None:
        lane = self._lane(language)
        lane.failures += 1
        delay = min(_BACKOFF_MAX, _BACKOFF_FIRST * 2 ** (lane.failures - 1))
        log.warning("warm_sandbox_failed", language=language, reason=why, retry_in=delay)
        if not self._closed:
            self._schedule_refill(language, delay)

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("warm_pool_task_failed", error=repr(task.exception()))

    async def _discard_all(self, reason: str) -> None:
        doomed: list[Sandbox] = []
        for lane in self._lanes.values():
            while lane.waiting:
                doomed.append(lane.waiting.popleft().sandbox)
        for _ in doomed:
            POOL_DISCARDS.labels(reason).inc()
        if doomed:
            await asyncio.gather(*(s.discard() for s in doomed), return_exceptions=True)

    # ------------------------------------------------------------------ reporting
    def waiting(self, language: Language | None = None) -> list[Sandbox]:
        """The sandboxes waiting now (all languages, or one)."""
        lanes = [self._lane(language)] if language else list(self._lanes.values())
        return [w.sandbox for lane in lanes for w in lane.waiting]

    async def wait_ready(self, language: Language, timeout: float = 10.0) -> bool:  # noqa: ASYNC109
        """Wait until a ``language`` sandbox is waiting with its interpreter up (tests, tools)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(s.interpreter_started and s.alive for s in self.waiting(language)):
                return True
            await asyncio.sleep(0.005)
        return False

    def stats(self) -> PoolStats:
        """Counts and memory for /health and /metrics."""
        per_language = {lang: len(lane.waiting) for lang, lane in self._lanes.items()}
        ready = {
            lang: sum(1 for w in lane.waiting if w.sandbox.interpreter_started)
            for lang, lane in self._lanes.items()
        }
        memory = 0
        for lane in self._lanes.values():
            for warm in lane.waiting:
                pids = warm.pids
                if pids is None:
                    pids = process_tree([warm.sandbox.pid])
                    if warm.sandbox.interpreter_started:
                        warm.pids = pids
                memory += sum(rss_bytes(pid) for pid in pids)
        return PoolStats(
            warm_sandboxes=sum(per_language.values()),
            memory_bytes=memory,
            languages=dict(per_language),
            ready=ready,
            starting=sum(lane.starting for lane in self._lanes.values()),
            hits=self.hits,
            misses=self.misses,
            generation=self._generation,
        )


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)
