"""Reliable reporting to the control plane (CONTRACT.md section 2).

* Results go through a durable outbox: ``RESULTS_DIR/outbox/<execution_id>.json`` is written
  with write + fsync + rename + directory fsync **before** anything is sent, and removed only
  after a 2xx. A permanent answer (400/404/409/422) moves it to ``RESULTS_DIR/undeliverable/``
  with the reason. Transient failures (connection errors, timeouts, 429, 5xx, and any other
  non-2xx we cannot classify) are retried with exponential backoff and jitter (tenacity);
  when the budget is spent the file simply stays in the outbox and the replayer retries it
  every ``OUTBOX_REPLAY_INTERVAL_SECONDS`` and at start-up (files left by a killed process).
* Heartbeats run in a task bound to an ``async with`` block: they stop when the block exits.
* ``containers/ready`` is retried until acknowledged; ``containers/exited`` is one short try.

An outbox file is one line of JSON metadata, a newline, then the exact JSON body that is
POSTed (compact JSON never contains a raw newline), so a 30 MiB result is serialised once.

Nothing here ever logs the token or result contents (stdout, stderr, return value).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import structlog
from prometheus_client import Counter, Gauge, Histogram
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_never,
    wait_exponential_jitter,
)

from . import __version__ as _version
from .config import Settings
from .metrics import REGISTRY
from .models import EXECUTION_ID_RE, ExecutionResult

log = structlog.get_logger(__name__)

OUTBOX_DIRNAME = "outbox"
UNDELIVERABLE_DIRNAME = "undeliverable"
_SUFFIX = ".json"
_TMP_SUFFIX = ".tmp"
# Answers that will not change on retry (CONTRACT.md section 2).
PERMANENT_STATUSES = frozenset({400, 404, 409, 422})
EXITED_TIMEOUT_SECONDS = 0.5
# Replayed results are delivered a few at a time so a large backlog does not open hundreds
# of connections; fresh results never wait behind the backlog.
_REPLAY_CONCURRENCY = 4
_DELIVERED_MEMORY = 10_000
_REASON_TEXT_LIMIT = 2000

CALLBACKS = Counter(
    "sandbox_callbacks_total",
    "HTTP callbacks to the control plane, per attempt, by kind and outcome (success, transient, permanent).",
    ["kind", "outcome"],
    registry=REGISTRY,
)
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


class TransientCallbackError(Exception):
    """A failure worth retrying: connection error, timeout, 429, 5xx, other non-2xx."""


class PermanentCallbackError(Exception):
    """400/404/409/422: the control plane will answer the same on every retry."""

    def __init__(self, status_code: int, text: str) -> None:
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code
        self.text = text


@dataclass(frozen=True)
class _Envelope:
    execution_id: str
    session_id: str | None
    submitted_at: float  # wall clock, so latency survives a restart
    body: bytes


def utc_now_iso() -> str:
    """ISO 8601 UTC timestamp with an explicit offset."""
    return datetime.now(UTC).isoformat()


def sanitize_json(value: Any) -> Any:
    """Replace NaN and +/-Infinity (not JSON) by None, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): sanitize_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [sanitize_json(v) for v in value]
    return value


def result_body(result: ExecutionResult) -> dict[str, Any]:
    """The result callback body: ``callback_body()`` made strictly JSON-safe.

    Required numbers that were non-finite become 0.0 rather than null, which the control
    plane would reject with 422 and so lose the result. Optional metrics without a value
    are left out rather than sent as null (docs/CONTRACT.md section 2 types them as numbers).
    """
    body: dict[str, Any] = sanitize_json(result.callback_body())
    if body.get("execution_time") is None:
        body["execution_time"] = 0.0
    metrics = body.get("metrics")
    if isinstance(metrics, dict):
        body["metrics"] = {k: v for k, v in metrics.items() if v is not None}
        body["metrics"].setdefault("duration_ms", 0.0)
    return body


def encode_json(value: Any) -> bytes:
    """Compact JSON; raises ValueError on NaN/Infinity instead of emitting invalid JSON."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, data: bytes) -> None:
    """write + fsync + rename + fsync(dir): after return the file survives power loss."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}{_TMP_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class Outbox:
    """The on-disk store of results not yet acknowledged (one file per execution)."""

    def __init__(self, results_dir: Path) -> None:
        self.pending_dir = results_dir / OUTBOX_DIRNAME
        self.undeliverable_dir = results_dir / UNDELIVERABLE_DIRNAME

    def ensure_dirs(self) -> None:
        for directory in (self.pending_dir, self.undeliverable_dir):
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def path(self, execution_id: str) -> Path:
        return self.pending_dir / f"{execution_id}{_SUFFIX}"

    def undeliverable_path(self, execution_id: str) -> Path:
        return self.undeliverable_dir / f"{execution_id}{_SUFFIX}"

    def exists(self, execution_id: str) -> bool:
        return self.path(execution_id).exists() or self.undeliverable_path(execution_id).exists()

    def write(self, envelope: _Envelope) -> None:
        meta = {
            "version": 1,
            "execution_id": envelope.execution_id,
            "session_id": envelope.session_id,
            "submitted_at": envelope.submitted_at,
        }
        self.ensure_dirs()
        _atomic_write(self.path(envelope.execution_id), encode_json(meta) + b"\n" + envelope.body)

    def read(self, execution_id: str) -> _Envelope:
        """Load one pending result; raises ValueError when the file is corrupt."""
        raw = self.path(execution_id).read_bytes()
        head, sep, body = raw.partition(b"\n")
        if not sep:
            raise ValueError("no metadata line")
        meta = json.loads(head)
        json.loads(body)  # a body we cannot parse would only earn a 4xx
        if meta.get("execution_id") != execution_id:
            raise ValueError("execution_id does not match the file name")
        return _Envelope(execution_id, meta.get("session_id"), float(meta["submitted_at"]), body)

    def remove(self, execution_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(execution_id).unlink()

    def move_to_undeliverable(self, execution_id: str, reason: dict[str, Any]) -> None:
        """Keep the result with the reason it could not be delivered, out of the replay set."""
        src = self.path(execution_id)
        try:
            raw = src.read_bytes()
        except FileNotFoundError:
            return
        head, _, body = raw.partition(b"\n")
        try:
            meta = json.loads(head)
        except ValueError:
            meta = {"execution_id": execution_id, "corrupt_metadata": True}
        meta["undeliverable"] = reason
        self.ensure_dirs()
        _atomic_write(self.undeliverable_path(execution_id), encode_json(meta) + b"\n" + body)
        src.unlink(missing_ok=True)
        _fsync_dir(self.pending_dir)

    def scan(self) -> list[str]:
        """Ids of pending results, oldest first; removes temp files of interrupted writes."""
        entries: list[tuple[float, str]] = []
        try:
            iterator = os.scandir(self.pending_dir)
        except FileNotFoundError:
            return []
        with iterator:
            for entry in iterator:
                name = entry.name
                if name.endswith(_TMP_SUFFIX) and name.startswith("."):
                    # Only our own pid could be writing it right now.
                    if f".{os.getpid()}{_TMP_SUFFIX}" not in name:
                        with contextlib.suppress(OSError):
                            os.unlink(entry.path)
                    continue
                if not name.endswith(_SUFFIX):
                    continue
                execution_id = name[: -len(_SUFFIX)]
                if not EXECUTION_ID_RE.match(execution_id):
                    continue
                with contextlib.suppress(OSError):
                    entries.append((entry.stat().st_mtime, execution_id))
        return [eid for _, eid in sorted(entries)]

    def count_undeliverable(self) -> int:
        try:
            return sum(1 for name in os.listdir(self.undeliverable_dir) if name.endswith(_SUFFIX))
        except FileNotFoundError:
            return 0


def _classify(response: httpx.Response) -> None:
    """Return on 2xx, raise Permanent/TransientCallbackError otherwise."""
    if 200 <= response.status_code < 300:
        return
    if response.status_code in PERMANENT_STATUSES:
        raise PermanentCallbackError(response.status_code, response.text[:_REASON_TEXT_LIMIT])
    # 429, 5xx, and anything unexpected (401/403 after a token fix, a proxy's 3xx...) are
    # retried: the result is kept either way, and a replay every few seconds costs little.
    raise TransientCallbackError(f"HTTP {response.status_code}")


class ControlPlaneReporter:
    """Callbacks to the control plane with a durable outbox (see module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.outbox = Outbox(settings.results_dir)
        self._base_url = (
            settings.control_plane_url.rstrip("/") + settings.callback_prefix
            if settings.control_plane_url
            else None
        )
        self._client: httpx.AsyncClient | None = None
        self._deliveries: dict[str, asyncio.Task[None]] = {}
        self._pending: set[str] = set()
        self._delivered_ids: OrderedDict[str, None] = OrderedDict()
        self._delivered = 0
        self._undeliverable = 0
        self._replayer: asyncio.Task[None] | None = None
        self._ready_task: asyncio.Task[None] | None = None
        # Results whose outbox write failed (disk full...): delivered from memory instead.
        self._memory_only: dict[str, _Envelope] = {}
        self._wake = asyncio.Event()  # set by flush(): backoff sleeps end early
        self._replay_slots = asyncio.Semaphore(_REPLAY_CONCURRENCY)
        self._exited_sent = False
        self._started = False
        self._closed = False

    # ------------------------------------------------------------------ lifecycle
    @property
    def enabled(self) -> bool:
        """Whether anything is sent (CONTROL_PLANE_URL is set)."""
        return self._base_url is not None

    async def start(self) -> None:
        """Open the client, pick up results a previous process left, start the replayer."""
        if self._started:
            return
        self._started = True
        await asyncio.to_thread(self.outbox.ensure_dirs)
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
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(self.settings.callback_timeout_seconds),
            headers=self._common_headers(),
            transport=httpx.AsyncHTTPTransport(retries=0),
            follow_redirects=False,
        )
        self._replayer = asyncio.create_task(self._replay_loop(), name="outbox-replayer")

    async def aclose(self) -> None:
        """Stop every background task and close the client; pending results stay on disk."""
        self._closed = True
        tasks: list[asyncio.Task[None]] = list(self._deliveries.values())
        for task in (self._replayer, self._ready_task):
            if task is not None:
                tasks.append(task)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def stats(self) -> dict[str, int]:
        """Counts for /health and /metrics: pending, undeliverable, delivered (this process)."""
        return {
            "pending": len(self._pending),
            "undeliverable": self._undeliverable,
            "delivered": self._delivered,
        }

    # ------------------------------------------------------------------ results
    async def submit_result(self, execution_id: str, session_id: str | None, result: ExecutionResult) -> None:
        """Commit the result to the outbox durably, then deliver it in the background.

        Idempotent per execution id: a second submit keeps the first result. A failing disk
        is logged and the result is still delivered from memory rather than dropped.
        """
        if not EXECUTION_ID_RE.match(execution_id):
            raise ValueError("invalid execution_id")
        if self._base_url is None:
            # Standalone: nothing will ever deliver these, so the outbox would only grow.
            # The service keeps results in memory for GET /executions/{id}.
            return
        submitted_at = time.time()
        bound = log.bind(execution_id=execution_id, session_id=session_id)
        if execution_id in self._pending or execution_id in self._delivered_ids:
            bound.warning("result_already_submitted", detail="keeping the first result")
            return
        # Claimed synchronously, so a concurrent second submit of this id sees it.
        self._pending.add(execution_id)
        envelope = _Envelope(execution_id, session_id, submitted_at, encode_json(result_body(result)))
        try:
            if await asyncio.to_thread(self.outbox.exists, execution_id):
                # Left by an earlier process (pending or undeliverable): that one wins.
                bound.warning("result_already_submitted", detail="keeping the first result")
                if not self.outbox.path(execution_id).exists():
                    self._pending.discard(execution_id)
                return
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
        if self._base_url is not None and self._client is not None and not self._closed:
            self._spawn_delivery(execution_id, envelope, replay=False)

    def _spawn_delivery(self, execution_id: str, envelope: _Envelope | None, *, replay: bool) -> None:
        if execution_id in self._deliveries:
            return
        task = asyncio.create_task(
            self._deliver(execution_id, envelope, replay=replay), name=f"deliver-{execution_id}"
        )
        self._deliveries[execution_id] = task

    def _retrying(self, *, attempts: int | None) -> AsyncRetrying:
        cap = max(0.0, self.settings.callback_max_backoff_seconds)
        base = min(1.0, cap)
        return AsyncRetrying(
            stop=stop_after_attempt(attempts) if attempts is not None else stop_never,
            wait=wait_exponential_jitter(multiplier=base, max=cap, jitter=base / 2),
            retry=retry_if_exception_type(TransientCallbackError),
            sleep=self._sleep,
            reraise=True,
        )

    async def _sleep(self, seconds: float) -> None:
        # Backoff that flush() can cut short (at shutdown every second counts).
        if self._wake.is_set():
            await asyncio.sleep(min(seconds, 0.05))
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def _deliver(self, execution_id: str, envelope: _Envelope | None, *, replay: bool) -> None:
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
            async for attempt in self._retrying(attempts=max(1, self.settings.callback_max_attempts)):
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

    async def _post_result(self, envelope: _Envelope, *, replay: bool, bound: Any, attempt_no: int) -> None:
        headers = {"Idempotency-Key": envelope.execution_id, "Content-Type": "application/json"}
        url = f"{self._base_url}/executions/{envelope.execution_id}/result"
        slot: contextlib.AbstractAsyncContextManager[Any] = (
            self._replay_slots if replay else contextlib.nullcontext()
        )
        async with slot:
            response = await self._send("result", url, envelope.body, headers, bound, attempt_no=attempt_no)
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

    async def _send(
        self,
        kind: str,
        url: str,
        content: bytes,
        headers: dict[str, str] | None,
        bound: Any,
        *,
        attempt_no: int = 1,
        request_timeout: float | None = None,
    ) -> httpx.Response:
        """One POST; raises Transient/PermanentCallbackError unless 2xx."""
        client = self._client
        if client is None:
            raise TransientCallbackError("client closed")
        request_headers = {"Content-Type": "application/json", **(headers or {})}
        try:
            response = await client.post(
                url,
                content=content,
                headers=request_headers,
                timeout=request_timeout if request_timeout is not None else httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.HTTPError as exc:
            CALLBACKS.labels(kind, "transient").inc()
            bound.warning("callback_failed", kind=kind, attempt=attempt_no, error=type(exc).__name__)
            raise TransientCallbackError(type(exc).__name__) from exc
        try:
            _classify(response)
        except PermanentCallbackError:
            CALLBACKS.labels(kind, "permanent").inc()
            raise
        except TransientCallbackError:
            CALLBACKS.labels(kind, "transient").inc()
            bound.warning("callback_failed", kind=kind, attempt=attempt_no, status_code=response.status_code)
            raise
        CALLBACKS.labels(kind, "success").inc()
        return response

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
            await asyncio.sleep(jittered(self.settings.outbox_replay_interval_seconds))

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
        if self._base_url is None or self._client is None:
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

    # ------------------------------------------------------------------ heartbeats
    @contextlib.asynccontextmanager
    async def heartbeat(self, execution_id: str) -> AsyncIterator[None]:
        """Send heartbeats every HEARTBEAT_INTERVAL while the block runs; stop when it exits."""
        if self._base_url is None or not EXECUTION_ID_RE.match(execution_id):
            yield
            return
        task = asyncio.create_task(self._heartbeat_loop(execution_id), name=f"heartbeat-{execution_id}")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _heartbeat_loop(self, execution_id: str) -> None:
        interval = max(0.01, self.settings.heartbeat_interval)
        loop = asyncio.get_running_loop()
        started = loop.time()
        url = f"{self._base_url}/executions/{execution_id}/heartbeat"
        bound = log.bind(execution_id=execution_id)
        beat = 0
        while True:
            beat += 1
            # A fixed schedule (not sleep-after-send) keeps beats one interval apart even
            # when the control plane is slow to answer.
            target = started + beat * interval
            delay = target - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -interval:  # a stalled loop: skip missed beats rather than burst
                beat = int((loop.time() - started) // interval)
                continue
            body = {
                "timestamp": utc_now_iso(),
                "progress": {
                    "state": "running",
                    "elapsed_seconds": round(loop.time() - started, 3),
                    "beat": beat,
                },
            }
            try:
                await self._send(
                    "heartbeat",
                    url,
                    encode_json(body),
                    None,
                    bound,
                    request_timeout=min(self.settings.callback_timeout_seconds, interval),
                )
            except (TransientCallbackError, PermanentCallbackError) as exc:
                bound.warning("heartbeat_failed", error=str(exc))
            except asyncio.CancelledError:
                raise
            except Exception:
                bound.exception("heartbeat_error")

    # ------------------------------------------------------------------ lifecycle callbacks
    def _identity(self) -> dict[str, Any]:
        return {
            "container_id": self.settings.container_identity,
            # A string, never null: without POD_NAME the hostname is the pod name.
            "pod_name": self.settings.pod_name or self.settings.container_identity,
        }

    def announce_ready(self) -> None:
        """Schedule containers/ready in the background, retried until a 2xx."""
        if self._base_url is None or self._ready_task is not None or self._closed:
            return
        self._ready_task = asyncio.get_running_loop().create_task(self._ready(), name="announce-ready")

    async def _ready(self) -> None:
        url = f"{self._base_url}/containers/ready"
        bound = log.bind(container_id=self.settings.container_identity)
        body = {
            **self._identity(),
            "executor_port": self.settings.executor_port,
            "ready_at": utc_now_iso(),
        }
        content = encode_json(body)
        attempt_no = 0

        async def once() -> None:
            nonlocal attempt_no
            attempt_no += 1
            try:
                await self._send("ready", url, content, None, bound, attempt_no=attempt_no)
            except PermanentCallbackError as exc:
                # The session can run nothing until this is acknowledged: keep trying.
                bound.error("ready_refused", status_code=exc.status_code, attempt=attempt_no)
                raise TransientCallbackError(str(exc)) from exc

        try:
            await self._run_retrying(once, attempts=None)
            bound.info("ready_acknowledged", attempts=attempt_no)
        except asyncio.CancelledError:
            raise
        except Exception:
            bound.exception("ready_error")

    async def _run_retrying(self, func: Callable[[], Awaitable[None]], *, attempts: int | None) -> None:
        async for attempt in self._retrying(attempts=attempts):
            with attempt:
                await func()

    async def announce_exited(self, exit_code: int, exit_reason: str) -> None:
        """POST containers/exited once with a short timeout; never raises."""
        if self._base_url is None or self._exited_sent:
            return
        self._exited_sent = True
        if self._ready_task is not None and not self._ready_task.done():
            self._ready_task.cancel()
        body = {
            **self._identity(),
            "exit_code": exit_code,
            "exit_reason": exit_reason,
            "exited_at": utc_now_iso(),
        }
        bound = log.bind(container_id=self.settings.container_identity)
        timeout = min(EXITED_TIMEOUT_SECONDS, self.settings.callback_timeout_seconds)
        try:
            async with asyncio.timeout(timeout + 0.05):
                await self._send(
                    "exited",
                    f"{self._base_url}/containers/exited",
                    encode_json(body),
                    None,
                    bound,
                    request_timeout=timeout,
                )
            bound.info("exited_announced", exit_code=exit_code, exit_reason=exit_reason)
        except (TransientCallbackError, PermanentCallbackError, TimeoutError) as exc:
            bound.warning("exited_announce_failed", error=str(exc) or type(exc).__name__)
        except Exception:
            bound.exception("exited_announce_error")

    # ------------------------------------------------------------------ helpers
    def _common_headers(self) -> dict[str, str]:
        headers = {"User-Agent": f"sandbox-executor/{_version}", "Accept": "application/json"}
        if self.settings.internal_api_token:
            headers["Authorization"] = f"Bearer {self.settings.internal_api_token}"
        return headers


def jittered(seconds: float) -> float:
    """``seconds`` +/- 10 %, so that many containers do not replay in lockstep."""
    return seconds * random.uniform(0.9, 1.1)  # noqa: S311 - not security relevant
