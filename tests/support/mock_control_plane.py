"""The control plane of docs/CONTRACT.md section 2 as an ``httpx.MockTransport``, and a
virtual clock: unit tests of the reporter with no socket and no real waiting.

``MockControlPlane`` answers like the real one (201 first result, 200 duplicate, 400
unknown status, 409 after ``crashed``, 422 when a body fails the strict models of
tests/support/contract_models.py) and can be scripted: ``respond(status)``,
``fail(httpx.ConnectError)`` (refused, timed out...), ``hang()`` (no answer until
``release()``). Each call records the virtual time it arrived at.

``VirtualClock`` is the reporter's ``sleep`` and ``clock``: sleeps end only when the test
moves time on, with ``advance(seconds)`` or ``run_until(predicate)`` (which jumps from one
sleeper's deadline to the next until the predicate holds).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from pydantic import BaseModel, ValidationError

from tests.support.contract_models import ExitedBody, HeartbeatBody, ReadyBody, ResultBody

PREFIX = "/api/v1/internal"
_ROUTES: list[tuple[str, re.Pattern[str], type[BaseModel]]] = [
    ("result", re.compile(r"^/executions/(?P<id>[^/]+)/result$"), ResultBody),
    ("heartbeat", re.compile(r"^/executions/(?P<id>[^/]+)/heartbeat$"), HeartbeatBody),
    ("ready", re.compile(r"^/containers/ready$"), ReadyBody),
    ("exited", re.compile(r"^/containers/exited$"), ExitedBody),
]


class VirtualClock:
    """Monotonic time that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []  # every duration asked for, in order
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + max(0.0, seconds), next(self._order), future))
        await future

    def _next_deadline(self) -> float | None:
        while self._sleepers and self._sleepers[0][2].done():  # cancelled sleeps
            heapq.heappop(self._sleepers)
        return self._sleepers[0][0] if self._sleepers else None

    def _wake_next(self) -> None:
        deadline, _, future = heapq.heappop(self._sleepers)
        self.now = max(self.now, deadline)
        future.set_result(None)

    async def settle(self) -> None:
        """Let every task run until it waits again; worker threads (disk) get a moment."""
        for _ in range(3):
            await asyncio.sleep(0.001)

    async def advance(self, seconds: float) -> None:
        """Move time on by ``seconds``, waking the sleepers due on the way, in order."""
        target = self.now + seconds
        await self.settle()
        while (deadline := self._next_deadline()) is not None and deadline <= target:
            self._wake_next()
            await self.settle()
        self.now = target
        await self.settle()

    async def run_until(self, predicate: Callable[[], bool], *, limit: float = 3600.0) -> None:
        """Move time on, sleeper by sleeper, until ``predicate()`` (at most ``limit`` s)."""
        end = self.now + limit
        real_deadline = time.monotonic() + 10
        while True:
            await self.settle()
            if predicate():
                return
            assert time.monotonic() < real_deadline, "no progress in 10 real seconds"
            deadline = self._next_deadline()
            if deadline is None or deadline > end:
                # Nothing sleeps: what is awaited runs in a thread or in another task.
                await asyncio.sleep(0.005)
                continue
            self._wake_next()


@dataclass
class Call:
    """One request the mock control plane received."""

    kind: str  # result | heartbeat | ready | exited | other
    execution_id: str | None
    request: httpx.Request
    body: bytes
    at: float  # virtual time of arrival
    status: int | None = None  # None: it failed (scripted) or never got an answer

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        return self.request.headers.get(name)


@dataclass
class _Rule:
    kind: str | None
    times: int | None
    status: int | None = None
    error: type[httpx.HTTPError] | None = None
    hang: bool = False


@dataclass
class MockControlPlane:
    """See the module docstring; ``transport`` goes to the reporter."""

    clock: VirtualClock
    url: str = "http://control-plane.test"
    prefix: str = PREFIX
    calls: list[Call] = field(default_factory=list)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    _rules: list[_Rule] = field(default_factory=list)
    _released: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self._handle)

    # ---------------------------------------------------------------- scripting
    def respond(self, status: int, *, kind: str | None = None, times: int | None = None) -> None:
        self._rules.append(_Rule(kind, times, status=status))

    def fail(
        self, error: type[httpx.HTTPError], *, kind: str | None = None, times: int | None = None
    ) -> None:
        self._rules.append(_Rule(kind, times, error=error))

    def hang(self, *, kind: str | None = None, times: int | None = None) -> None:
        self._rules.append(_Rule(kind, times, hang=True))

    def release(self) -> None:
        """Answer the hung requests (normally) and stop hanging."""
        self._rules = [rule for rule in self._rules if not rule.hang]
        self._released.set()

    def clear(self) -> None:
        self._rules.clear()

    def of(self, kind: str, execution_id: str | None = None) -> list[Call]:
        return [c for c in self.calls if c.kind == kind and execution_id in (None, c.execution_id)]

    # ---------------------------------------------------------------- answering
    def _take_rule(self, kind: str) -> _Rule | None:
        for rule in self._rules:
            if rule.kind not in (None, kind) or rule.times == 0:
                continue
            if rule.times is not None:
                rule.times -= 1
            return rule
        return None

    async def _handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        kind, execution_id, model = "other", None, None
        if path.startswith(self.prefix):
            for name, pattern, schema in _ROUTES:
                match = pattern.match(path[len(self.prefix) :])
                if match:
                    kind, execution_id, model = name, match.groupdict().get("id"), schema
        call = Call(kind, execution_id, request, request.content, self.clock.now)
        self.calls.append(call)
        rule = self._take_rule(kind)
        if rule is not None and rule.error is not None:
            raise rule.error("scripted", request=request)
        if rule is not None and rule.hang:
            await self._released.wait()
        if rule is not None and rule.status is not None:
            status, answer = rule.status, {"detail": "scripted"}
        else:
            status, answer = self._contract_answer(call, model)
        call.status = status
        return httpx.Response(status, json=answer)

    def _contract_answer(self, call: Call, model: type[BaseModel] | None) -> tuple[int, Any]:
        if call.request.method != "POST" or model is None:
            return 404, {"detail": "Not Found"}
        try:
            body = json.loads(call.body, parse_constant=_reject_constant)
        except ValueError:
            return 422, {"detail": "body is not strict JSON"}
        if call.kind == "result" and isinstance(body, dict) and body.get("status") not in _STATUSES:
            return 400, {"detail": f"unknown status {body.get('status')!r}"}
        try:
            model.model_validate_json(call.body)
        except ValidationError as exc:
            return 422, {"detail": exc.errors(include_url=False, include_input=False)}
        if call.kind != "result":
            return 200, {"status": "ok"}
        eid = call.execution_id or ""
        previous = self.results.get(eid)
        if previous is None:
            self.results[eid] = body
            return 201, {"status": "recorded"}
        if previous.get("status") == "crashed":
            return 409, {"detail": "execution is in a conflicting state"}
        return 200, {"status": "already recorded"}


_STATUSES = {"success", "failed", "timeout", "crashed"}


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
