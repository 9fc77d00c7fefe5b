"""Delivery of results, heartbeats and lifecycle notices to the control plane.

Results are committed to the :class:`Outbox` before anything is sent, retried with
backoff while the answers are transient, replayed from disk, and set aside when refused
for good. docs/REPORTING.md tells the whole story; nothing here logs the token or result
contents (stdout, stderr, return value).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import structlog
from prometheus_client import Counter, Gauge, Histogram
from structlog.typing import FilteringBoundLogger

from ..config import Settings
from ..metrics import REGISTRY
from ..models import EXECUTION_ID_RE, ExecutionResult
from .bodies import encode_json, result_body, utc_now_iso
from .client import CallbackClient, PermanentCallbackError, TransientCallbackError, retrying
from .lifecycle import Lifecycle
from .outbox import Envelope, Outbox

log = structlog.get_logger(__name__)

Sleep = Callable[[float], Awaitable[None]]

# While flush() runs, a retry waits at most this long.
FLUSH_BACKOFF_SECONDS = 0.05
# Replayed results are delivered a few at a time so a large backlog does not open hundreds
# of connections; fresh results never wait behind the backlog.
_REPLAY_CONCURRENCY = 4
_DELIVERED_MEMORY = 10_000

UNDELIVERABLE = Counter(
    "sandbox_results_undeliverable_total",
    "Results the control plane refused permanently (400/404/409/422), kept in RESULTS_DIR/undeliverable.",
    registry=REGISTRY,
)
DELIVERED = Counter(
    "sandbox_results_delivered_total",
    "Results acknowledged (2xx) by the control plane.",
    registry=REGISTRY,
)
OUTBOX_PENDING = Gauge(
    "sandbox_outbox_pending",
    "Results committed to the outbox and not yet acknowledged.",
    registry=REGISTRY,
)
DELIVERY_LATENCY = Histogram(
    "sandbox_result_delivery_latency_seconds",
    "From the hand-over of a final result (end of run) to the control plane's 2xx.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
    registry=REGISTRY,
)


@dataclass(frozen=True)
class DeliveryStats:
    """Results waiting for delivery, given up on, and delivered since start."""

    pending: int
    undeliverable: int
    delivered: int


class ControlPlaneReporter:
    """Callbacks to the control plane with a durable outbox (docs/REPORTING.md).

    ``transport`` carries the HTTP requests (a real connection pool by default); ``sleep``
    and ``clock`` are the waits and the monotonic time of backoff, replay and heartbeats.
    Unit tests pass an ``httpx.MockTransport`` and a virtual clock.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.outbox = Outbox(settings.results_dir)
        self._base_url = (
            settings.control_plane_url.rstrip("/") + settings.callback_prefix
            if settings.control_plane_url
            else None
        )
        self._sleep = sleep
        # No I/O until the first request: the client may exist before the loop runs.
        self._client = (
            CallbackClient(
                self._base_url,
                token=settings.internal_api_token,
                timeout=settings.callback_timeout_seconds,
                transport=transport,
            )
            if self._base_url is not None
            else None
        )
        self.lifecycle = Lifecycle(settings, self._client, sleep=sleep, clock=clock)
        self._deliveries: dict[str, asyncio.Task[None]] = {}
        self._pending: set[str] = set()
        self._delivered_ids: OrderedDict[str, None] = OrderedDict()
        self._delivered = 0
        self._undeliverable = 0
        self._replayer: asyncio.Task[None] | None = None
        # Results whose outbox write failed (disk full...): delivered from memory instead.
        self._memory_only: dict[str, Envelope] = {}
        self._wake = asyncio.Event()  # set by flush(): backoff sleeps end early
        self._replay_slots = asyncio.Semaphore(_REPLAY_CONCURRENCY)
        self._started = False
        self._closed = False

    # ------------------------------------------------------------------ lifecycle
    @property
    def enabled(self) -> bool:
        """Whether anything is sent (CONTROL_PLANE_URL is set)."""
        return self._base_url is not None

    async def start(self) -> None:
        """Pick up results a previous process left, start the replayer."""
        if self._started:
            return
        self._started = True
        try:
            await asyncio.to_thread(self.outbox.ensure_dirs)
        except OSError as exc:
            # /health says so and executions are refused until RESULTS_DIR recovers.
            log.error("outbox_unavailable", error=f"{type(exc).__name__}: {exc}")
        left_over = await asyncio.to_thread(self.outbox.scan)
        self._undeliverable = await asyncio.to_thread(self.outbox.count_undeliverable)
        self._pending.update(left_over)
        self._update_gauge()
        if left_over:
            log.info("outbox_recovered", pending=len(left_over))
        if self._base_url is None:
            log.info(
                "control_plane_disabled",
                detail="CONTROL_PLANE_URL is not set; results are kept locally",
            )
            return
        self._replayer = asyncio.create_task(self._replay_loop(), name="outbox-replayer")

    async def aclose(self) -> None:
        """Stop every background task and close the client; pending results stay on disk."""
        self._closed = True
        tasks: list[asyncio.Task[None]] = list(self._deliveries.values())
        if self._replayer is not None:
            tasks.append(self._replayer)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await self.lifecycle.aclose()
        if self._client is not None:
            await self._client.aclose()

    def stats(self) -> DeliveryStats:
        """Counts for /health: pending, undeliverable, delivered (by this process)."""
        return DeliveryStats(len(self._pending), self._undeliverable, self._delivered)

    # ------------------------------------------------------------------ results
    async def submit_result(self, execution_id: str, session_id: str | None, result: ExecutionResult) -> bool:
        """Commit the result to the outbox durably, then deliver it in the background.

        Idempotent per execution id: a second submit keeps the first result. A failing disk
        is logged and the result is still delivered from memory rather than dropped.
        Returns whether the result (or the first one of its id) is committed: on disk, or
        with nothing to deliver (standalone); False when it lives in memory only.
        """
        if not EXECUTION_ID_RE.match(execution_id):
            raise ValueError("invalid execution_id")
        if self._base_url is None:
            # Standalone: nothing will ever deliver these, so the outbox would only grow.
            # The service keeps results in memory for GET /executions/{id}.
            return True
        submitted_at = time.time()
        bound = log.bind(execution_id=execution_id, session_id=session_id)
        if execution_id in self._pending or execution_id in self._delivered_ids:
            bound.warning("result_already_submitted", detail="keeping the first result")
            return execution_id not in self._memory_only
        # Claimed synchronously, so a concurrent second submit of this id sees it.
        self._pending.add(execution_id)
        envelope = Envelope(execution_id, session_id, submitted_at, encode_json(result_body(result)))
        try:
            if await asyncio.to_thread(self.outbox.exists, execution_id):
                # Left by an earlier process (pending or undeliverable): that one wins.
                bound.warning("result_already_submitted", detail="keeping the first result")
                if not self.outbox.path(execution_id).exists():
                    self._pending.discard(execution_id)
                return True
        except OSError:
            pass
        self._update_gauge()
        durable = True
        try:
            await asyncio.to_thread(self.outbox.write, envelope)
        except OSError as exc:
            durable = False
            self._memory_only[execution_id] = envelope
            bound.error("outbox_write_failed", error=f"{type(exc).__name__}: {exc}")
        bound.info("result_committed", durable=durable, bytes=len(envelope.body))
        if self._started and not self._closed:
            self._spawn_delivery(execution_id, envelope, replay=False)
        return durable

    def stored_result(self, execution_id: str) -> ExecutionResult | None:
        """The result an earlier process committed for ``execution_id`` (pending delivery or
        undeliverable), or None. Blocking: reads a file."""
        for path in (self.outbox.path(execution_id), self.outbox.undeliverable_path(execution_id)):
            try:
                _, _, body = path.read_bytes().partition(b"\n")
                return ExecutionResult.model_validate_json(body)
            except (OSError, ValueError):
                continue
        return None

    def _spawn_delivery(self, execution_id: str, envelope: Envelope | None, *, replay: bool) -> None:
        if execution_id in self._deliveries:
            return
        task = asyncio.create_task(
            self._deliver(execution_id, envelope, replay=replay), name=f"deliver-{execution_id}"
        )
        self._deliveries[execution_id] = task

    async def _backoff(self, seconds: float) -> None:
        # A retry's wait, which flush() cuts short (at shutdown every second counts).
        if self._wake.is_set():
            await self._sleep(min(seconds, FLUSH_BACKOFF_SECONDS))
            return
        waits = {asyncio.ensure_future(self._sleep(seconds)), asyncio.ensure_future(self._wake.wait())}
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
            await asyncio.gather(*waits, return_exceptions=True)

    async def _deliver(self, execution_id: str, envelope: Envelope | None, *, replay: bool) -> None:
        bound = log.bind(execution_id=execution_id)
        try:
            if envelope is None:
                try:
                    envelope = await asyncio.to_thread(self.outbox.read, execution_id)
                except FileNotFoundError:
                    self._pending.discard(execution_id)
                    self._update_gauge()
                    return
                except (ValueError, KeyError, TypeError) as exc:
                    bound.error("outbox_file_corrupt", error=str(exc))
                    await self._mark_undeliverable(
                        execution_id, {"reason": "corrupt_outbox_file", "error": str(exc)}
                    )
                    return
            bound = bound.bind(session_id=envelope.session_id)
            attempt_no = 0
            attempts = max(1, self.settings.callback_max_attempts)
            policy = retrying(self.settings.callback_max_backoff_seconds, attempts, self._backoff)
            async for attempt in policy:
                with attempt:
                    attempt_no += 1
                    await self._post_result(envelope, replay=replay, bound=bound, attempt_no=attempt_no)
        except PermanentCallbackError as exc:
            bound.error(
                "result_undeliverable",
                status_code=exc.status_code,
                detail="permanently refused by control plane; kept in RESULTS_DIR/undeliverable",
            )
            await self._mark_undeliverable(
                execution_id,
                {
                    "reason": "permanent_http_error",
                    "status_code": exc.status_code,
                    "response": exc.text,
                    "at": utc_now_iso(),
                },
            )
        except TransientCallbackError as exc:
            bound.warning(
                "result_delivery_postponed",
                error=str(exc),
                detail="retry budget spent; the outbox replayer will try again",
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            bound.exception("result_delivery_error")
        finally:
            current = asyncio.current_task()
            if self._deliveries.get(execution_id) is current:
                del self._deliveries[execution_id]

    async def _post_result(
        self, envelope: Envelope, *, replay: bool, bound: FilteringBoundLogger, attempt_no: int
    ) -> None:
        client = self._client
        if client is None:
            raise TransientCallbackError("client closed")
        headers = {"Idempotency-Key": envelope.execution_id}
        slot: contextlib.AbstractAsyncContextManager[Any] = (
            self._replay_slots if replay else contextlib.nullcontext()
        )
        async with slot:
            response = await client.post(
                "result",
                f"/executions/{envelope.execution_id}/result",
                envelope.body,
                log=bound,
                headers=headers,
                attempt=attempt_no,
            )
        latency = max(0.0, time.time() - envelope.submitted_at)
        DELIVERY_LATENCY.observe(latency)
        DELIVERED.inc()
        self._delivered += 1
        self._remember_delivered(envelope.execution_id)
        self._pending.discard(envelope.execution_id)
        self._memory_only.pop(envelope.execution_id, None)
        self._update_gauge()
        bound.info(
            "result_delivered",
            status_code=response.status_code,
            attempts=attempt_no,
            latency_ms=round(latency * 1000, 1),
        )
        try:
            await asyncio.to_thread(self.outbox.remove, envelope.execution_id)
        except OSError as exc:  # a leftover file is only redelivered (idempotent), never lost
            bound.warning("outbox_remove_failed", error=str(exc))

    async def _mark_undeliverable(self, execution_id: str, reason: dict[str, Any]) -> None:
        try:
            await asyncio.to_thread(self.outbox.move_to_undeliverable, execution_id, reason)
        except OSError as exc:
            log.error("undeliverable_move_failed", execution_id=execution_id, error=str(exc))
        UNDELIVERABLE.inc()
        self._undeliverable += 1
        self._pending.discard(execution_id)
        self._memory_only.pop(execution_id, None)
        # Never resend this id in this process, even if the move failed.
        self._remember_delivered(execution_id)
        self._update_gauge()

    def _remember_delivered(self, execution_id: str) -> None:
        self._delivered_ids[execution_id] = None
        while len(self._delivered_ids) > _DELIVERED_MEMORY:
            self._delivered_ids.popitem(last=False)

    def _update_gauge(self) -> None:
        OUTBOX_PENDING.set(len(self._pending))

    # ------------------------------------------------------------------ replayer
    async def _replay_loop(self) -> None:
        """Deliver what the outbox holds at start-up, then every replay interval."""
        while True:
            try:
                await self._replay_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbox_replay_error")
            await self._sleep(jittered(self.settings.outbox_replay_interval_seconds))

    async def _replay_once(self) -> None:
        scanned = await asyncio.to_thread(self.outbox.scan)
        # A delivered result whose file could not be removed is not pending again.
        on_disk = [eid for eid in scanned if eid not in self._delivered_ids]
        self._pending.update(on_disk)
        self._update_gauge()
        for execution_id in on_disk:
            if execution_id not in self._deliveries:
                self._spawn_delivery(execution_id, None, replay=True)
        for execution_id, envelope in list(self._memory_only.items()):
            if execution_id not in self._deliveries:
                self._spawn_delivery(execution_id, envelope, replay=True)

    async def flush(self, timeout: float) -> None:  # noqa: ASYNC109 - interface of the service
        """Try to deliver everything pending within ``timeout`` seconds (shutdown)."""
        if self._client is None or not self._started:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        self._wake.set()
        try:
            await asyncio.wait_for(self._replay_once(), max(0.0, deadline - loop.time()))
        except (TimeoutError, OSError):
            pass
        tasks = list(self._deliveries.values())
        try:
            if tasks:
                await asyncio.wait(tasks, timeout=max(0.0, deadline - loop.time()))
        finally:
            self._wake.clear()
        if self._pending:
            log.warning("flush_incomplete", pending=len(self._pending))

    # ------------------------------------------------------------------ lifecycle notices
    def heartbeat(self, execution_id: str) -> contextlib.AbstractAsyncContextManager[None]:
        """Heartbeats while the block runs (see Lifecycle.heartbeat)."""
        return self.lifecycle.heartbeat(execution_id)

    def announce_ready(self) -> None:
        """containers/ready in the background, retried until acknowledged."""
        if not self._closed:
            self.lifecycle.announce_ready()

    async def announce_exited(self, exit_code: int, exit_reason: str) -> None:
        """containers/exited, once, briefly; never raises."""
        await self.lifecycle.announce_exited(exit_code, exit_reason)


def jittered(seconds: float) -> float:
    """``seconds`` +/- 10 %, so that many containers do not replay in lockstep."""
    return seconds * random.uniform(0.9, 1.1)  # noqa: S311 - not security relevant
