"""What the container tells the control plane besides results: heartbeats of running
executions, containers/ready (retried until acknowledged) and containers/exited (one try).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog

from ..config import Settings
from ..models import EXECUTION_ID_RE
from .bodies import encode_json, exited_body, heartbeat_body, ready_body
from .client import CallbackClient, PermanentCallbackError, TransientCallbackError, retrying

log = structlog.get_logger(__name__)

EXITED_TIMEOUT_SECONDS = 0.5


class Lifecycle:
    """Heartbeats and the ready/exited notices, through ``client`` (None: send nothing).

    ``sleep`` and ``clock`` pace the heartbeats and the retries of ready.
    """

    def __init__(
        self,
        settings: Settings,
        client: CallbackClient | None,
        *,
        sleep: Callable[[float], Awaitable[None]],
        clock: Callable[[], float],
    ) -> None:
        self.settings = settings
        self._client = client
        self._sleep = sleep
        self._clock = clock
        self._ready_task: asyncio.Task[None] | None = None
        self._exited_sent = False
        self._closed = False

    async def aclose(self) -> None:
        """Stop retrying ready (the client belongs to the caller)."""
        self._closed = True
        if self._ready_task is not None:
            self._ready_task.cancel()
            await asyncio.gather(self._ready_task, return_exceptions=True)

    # ------------------------------------------------------------------ heartbeats
    @contextlib.asynccontextmanager
    async def heartbeat(self, execution_id: str) -> AsyncIterator[None]:
        """Send heartbeats every HEARTBEAT_INTERVAL while the block runs; stop when it exits."""
        if self._client is None or not EXECUTION_ID_RE.match(execution_id):
            yield
            return
        task = asyncio.create_task(
            self._heartbeat_loop(self._client, execution_id), name=f"heartbeat-{execution_id}"
        )
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _heartbeat_loop(self, client: CallbackClient, execution_id: str) -> None:
        interval = max(0.01, self.settings.heartbeat_interval_seconds)
        started = self._clock()
        path = f"/executions/{execution_id}/heartbeat"
        bound = log.bind(execution_id=execution_id)
        beat = 0
        while True:
            beat += 1
            # A fixed schedule (not sleep-after-send) keeps beats one interval apart even
            # when the control plane is slow to answer.
            target = started + beat * interval
            delay = target - self._clock()
            if delay > 0:
                await self._sleep(delay)
            elif delay < -interval:  # a stalled loop: skip missed beats rather than burst
                beat = int((self._clock() - started) // interval)
                continue
            content = encode_json(heartbeat_body(self._clock() - started, beat))
            try:
                await client.post(
                    "heartbeat",
                    path,
                    content,
                    log=bound,
                    request_timeout=min(self.settings.callback_timeout_seconds, interval),
                )
            except (TransientCallbackError, PermanentCallbackError) as exc:
                bound.warning("heartbeat_failed", error=str(exc))
            except asyncio.CancelledError:
                raise
            except Exception:
                bound.exception("heartbeat_error")

    # ------------------------------------------------------------------ ready / exited
    def announce_ready(self) -> None:
        """Schedule containers/ready in the background, retried until a 2xx."""
        if self._client is None or self._ready_task is not None or self._closed:
            return
        self._ready_task = asyncio.get_running_loop().create_task(
            self._ready(self._client), name="announce-ready"
        )

    async def _ready(self, client: CallbackClient) -> None:
        bound = log.bind(container_id=self.settings.container_identity)
        content = encode_json(ready_body(self.settings))
        attempt_no = 0
        try:
            async for attempt in retrying(self.settings.callback_max_backoff_seconds, None, self._sleep):
                with attempt:
                    attempt_no += 1
                    try:
                        await client.post(
                            "ready", "/containers/ready", content, log=bound, attempt=attempt_no
                        )
                    except PermanentCallbackError as exc:
                        # The session can run nothing until this is acknowledged: keep trying.
                        bound.error("ready_refused", status_code=exc.status_code, attempt=attempt_no)
                        raise TransientCallbackError(str(exc)) from exc
            bound.info("ready_acknowledged", attempts=attempt_no)
        except asyncio.CancelledError:
            raise
        except Exception:
            bound.exception("ready_error")

    async def announce_exited(self, exit_code: int, exit_reason: str) -> None:
        """POST containers/exited once with a short timeout; never raises."""
        if self._client is None or self._exited_sent:
            return
        self._exited_sent = True
        if self._ready_task is not None and not self._ready_task.done():
            self._ready_task.cancel()
        content = encode_json(exited_body(self.settings, exit_code, exit_reason))
        bound = log.bind(container_id=self.settings.container_identity)
        timeout = min(EXITED_TIMEOUT_SECONDS, self.settings.callback_timeout_seconds)
        try:
            async with asyncio.timeout(timeout + 0.05):
                await self._client.post(
                    "exited", "/containers/exited", content, log=bound, request_timeout=timeout
                )
            bound.info("exited_announced", exit_code=exit_code, exit_reason=exit_reason)
        except (TransientCallbackError, PermanentCallbackError, TimeoutError) as exc:
            bound.warning("exited_announce_failed", error=str(exc) or type(exc).__name__)
        except Exception:
            bound.exception("exited_announce_error")
