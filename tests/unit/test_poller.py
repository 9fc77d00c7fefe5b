"""The poller thread: probes run when due, reschedule themselves, survive their own errors."""

from __future__ import annotations

import threading
import time

import pytest

from sandbox_executor.poller import Poller


def test_probes_run_in_due_order_and_stop_on_none() -> None:
    poller = Poller()
    seen: list[str] = []
    done = threading.Event()

    def once(name: str) -> None:
        seen.append(name)
        if len(seen) == 3:
            done.set()

    poller.add("late", lambda: once("late"), delay=0.06)
    poller.add("early", lambda: once("early"), delay=0.0)
    poller.add("middle", lambda: once("middle"), delay=0.03)
    assert done.wait(2)
    assert seen == ["early", "middle", "late"]
    poller.close()


def test_a_probe_asks_for_its_next_run_and_can_be_cancelled() -> None:
    poller = Poller()
    ticks: list[float] = []

    def probe() -> float:
        ticks.append(time.monotonic())
        return 0.01

    handle = poller.add("tick", probe)
    time.sleep(0.2)
    handle.cancel()
    count = len(ticks)
    time.sleep(0.05)
    assert 5 <= count <= 25
    assert len(ticks) <= count + 1
    poller.close()


def test_a_failing_probe_does_not_stop_the_others() -> None:
    poller = Poller()
    ran = threading.Event()

    def boom() -> float:
        raise RuntimeError("probe bug")

    poller.add("boom", boom)
    poller.add("fine", lambda: ran.set(), delay=0.02)
    assert ran.wait(2)
    poller.close()
    with pytest.raises(RuntimeError):
        poller.add("late", lambda: None)
