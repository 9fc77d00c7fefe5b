"""One daemon thread that runs short periodic probes (memory watchdog, cgroup OOM checks,
workspace write cap).

A thread rather than the event loop: a probe must run on time even while the loop is busy
(a large response, a slow callback), and it only does /proc and statvfs reads that release
the GIL. Each probe returns the delay until its next run, so probes can speed up as a run
nears a limit. Probes must be quick and must not block; their callbacks into the daemon go
through ``loop.call_soon_threadsafe``.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

log = structlog.get_logger(__name__)

# A probe: returns the seconds until it should run again, or None when it is done.
Probe = Callable[[], float | None]

# After a probe raised: try again later instead of spinning or dying.
_RETRY_AFTER_ERROR = 0.5


@dataclass
class PollHandle:
    """Returned by :meth:`Poller.add`; ``cancel()`` stops the probe (idempotent)."""

    name: str
    probe: Probe
    cancelled: bool = field(default=False)

    def cancel(self) -> None:
        self.cancelled = True


class Poller:
    """Runs probes on one lazily started daemon thread, earliest due first."""

    def __init__(self, name: str = "sandbox-poller", clock: Callable[[], float] = time.monotonic) -> None:
        self._name = name
        self._clock = clock
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, PollHandle]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._closed = False

    def add(self, name: str, probe: Probe, delay: float = 0.0) -> PollHandle:
        """Run ``probe`` after ``delay`` seconds, then as often as it asks."""
        handle = PollHandle(name, probe)
        with self._cond:
            if self._closed:
                raise RuntimeError("the poller is closed")
            heapq.heappush(self._heap, (self._clock() + max(0.0, delay), next(self._seq), handle))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._cond.notify()
        return handle

    def close(self, timeout: float = 2.0) -> None:
        """Stop the thread; probes not yet run are dropped."""
        with self._cond:
            self._closed = True
            self._heap.clear()
            self._cond.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _next_due(self) -> PollHandle | None:
        with self._cond:
            while not self._closed:
                if not self._heap:
                    self._cond.wait()
                    continue
                due, _, handle = self._heap[0]
                if handle.cancelled:
                    heapq.heappop(self._heap)
                    continue
                wait = due - self._clock()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
                return handle
            return None

    def _run(self) -> None:
        while (handle := self._next_due()) is not None:
            try:
                delay = handle.probe()
            except Exception:
                log.exception("probe_failed", probe=handle.name)
                delay = _RETRY_AFTER_ERROR
            if delay is None or handle.cancelled:
                continue
            with self._cond:
                if not self._closed:
                    heapq.heappush(self._heap, (self._clock() + max(0.0, delay), next(self._seq), handle))
