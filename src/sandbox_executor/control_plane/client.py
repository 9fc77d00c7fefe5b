"""One POST to the control plane and what its answer means (docs/CONTRACT.md section 2).

2xx is delivered; 400/404/409/422 are permanent (the same answer on every retry);
connection errors, timeouts, 429, 5xx and anything else are transient.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx
from prometheus_client import Counter
from structlog.typing import FilteringBoundLogger
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_never,
    wait_exponential_jitter,
)

from .. import __version__
from ..metrics import REGISTRY

PERMANENT_STATUSES = frozenset({400, 404, 409, 422})
_REASON_TEXT_LIMIT = 2000

CALLBACKS = Counter(
    "sandbox_callbacks_total",
    "HTTP callbacks to the control plane, per attempt, by kind and outcome (success, transient, permanent).",
    ["kind", "outcome"],
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


def retrying(
    max_backoff_seconds: float, attempts: int | None, sleep: Callable[[float], Awaitable[None]]
) -> AsyncRetrying:
    """Retries of transient failures: exponential backoff with jitter, capped at
    ``max_backoff_seconds``; ``attempts`` in all (None: until it works)."""
    cap = max(0.0, max_backoff_seconds)
    base = min(1.0, cap)
    return AsyncRetrying(
        stop=stop_after_attempt(attempts) if attempts is not None else stop_never,
        wait=wait_exponential_jitter(multiplier=base, max=cap, jitter=base / 2),
        retry=retry_if_exception_type(TransientCallbackError),
        sleep=sleep,
        reraise=True,
    )


def classify(response: httpx.Response) -> None:
    """Return on 2xx, raise Permanent/TransientCallbackError otherwise."""
    if 200 <= response.status_code < 300:
        return
    if response.status_code in PERMANENT_STATUSES:
        raise PermanentCallbackError(response.status_code, response.text[:_REASON_TEXT_LIMIT])
    # 429, 5xx, and anything unexpected (401/403 after a token fix, a proxy's 3xx...) are
    # retried: the result is kept either way, and a replay every few seconds costs little.
    raise TransientCallbackError(f"HTTP {response.status_code}")


class CallbackClient:
    """POSTs JSON under ``base_url`` (CONTROL_PLANE_URL + the callback prefix).

    ``transport`` is where requests go: a real connection pool by default, an
    ``httpx.MockTransport`` in unit tests. The token is sent, never logged.
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None,
        timeout: float,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url
        headers = {"User-Agent": f"sandbox-executor/{__version__}", "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            headers=headers,
            transport=transport or httpx.AsyncHTTPTransport(retries=0),
            follow_redirects=False,
        )
        self._closed = False

    async def aclose(self) -> None:
        self._closed = True
        await self._client.aclose()

    async def post(
        self,
        kind: str,
        path: str,
        content: bytes,
        *,
        log: FilteringBoundLogger,
        headers: dict[str, str] | None = None,
        attempt: int = 1,
        request_timeout: float | None = None,
    ) -> httpx.Response:
        """One POST of ``content`` to ``base_url + path``; raises Transient/Permanent
        CallbackError unless 2xx. ``kind`` labels the metric and the log lines."""
        if self._closed:
            raise TransientCallbackError("client closed")
        request_headers = {"Content-Type": "application/json", **(headers or {})}
        try:
            response = await self._client.post(
                self.base_url + path,
                content=content,
                headers=request_headers,
                timeout=request_timeout if request_timeout is not None else httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.HTTPError as exc:
            CALLBACKS.labels(kind, "transient").inc()
            log.warning("callback_failed", kind=kind, attempt=attempt, error=type(exc).__name__)
            raise TransientCallbackError(type(exc).__name__) from exc
        try:
            classify(response)
        except PermanentCallbackError:
            CALLBACKS.labels(kind, "permanent").inc()
            raise
        except TransientCallbackError:
            CALLBACKS.labels(kind, "transient").inc()
            log.warning("callback_failed", kind=kind, attempt=attempt, status_code=response.status_code)
            raise
        CALLBACKS.labels(kind, "success").inc()
        return response
