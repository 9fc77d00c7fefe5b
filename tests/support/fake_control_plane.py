"""A fake control plane: a real HTTP/1.1 server on loopback, run in a thread.

It implements the callback routes of docs/CONTRACT.md section 2 with the control plane's
observed answers (201 first result, 200 duplicate, 400 unknown status, 409 after a
``crashed`` report, 422 schema errors, 404 for unknown ids when ``known_ids`` is set),
records every request (method, path, headers, body, arrival time, answer) and can be told to
misbehave:

* ``stop()``: stop listening and drop open connections (clients get "connection refused");
  ``start()`` listens again **on the same port**; ``down_for(seconds)`` does both.
* ``respond(status, kind=..., times=...)``: answer a fixed status (500, 503, 409, 422...).
* ``hang(seconds, kind=..., times=...)``: hold the request that long before answering.

Rules are matched in the order they were added; a rule with ``times`` is used that many
times, one without stays until ``clear_rules()``.

Usable from any test (``with FakeControlPlane() as cp: ...``) and from benchmarks.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PREFIX = "/api/v1/internal"
RESULT_STATUSES = {"success", "failed", "timeout", "crashed"}
_ROUTES = [
    ("result", re.compile(r"^/executions/(?P<id>[^/]+)/result$")),
    ("heartbeat", re.compile(r"^/executions/(?P<id>[^/]+)/heartbeat$")),
    ("ready", re.compile(r"^/containers/ready$")),
    ("exited", re.compile(r"^/containers/exited$")),
]


@dataclass
class RecordedRequest:
    """One request as the fake control plane saw it."""

    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    arrived_at: float  # time.time() when the whole request had been read
    arrived_monotonic: float
    kind: str  # result | heartbeat | ready | exited | other
    execution_id: str | None
    status: int | None = None  # what was answered (None: the connection went away first)

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass
class _Rule:
    kind: str | None
    status: int | None = None
    hang: float = 0.0
    times: int | None = None
    body: Any = None


@dataclass
class _State:
    results: dict[str, dict[str, Any]] = field(default_factory=dict)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], fake: FakeControlPlane) -> None:
        self.fake = fake
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        with self.connections_lock:
            conns = list(self.connections)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def _handle(self) -> None:
        fake = self.server.fake
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        route = self.path.split("?", 1)[0]
        kind, execution_id = "other", None
        if route.startswith(fake.prefix):
            sub = route[len(fake.prefix) :]
            for name, pattern in _ROUTES:
                match = pattern.match(sub)
                if match:
                    kind = name
                    execution_id = match.groupdict().get("id")
                    break
        record = RecordedRequest(
            method=self.command,
            path=self.path,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            arrived_at=time.time(),
            arrived_monotonic=time.monotonic(),
            kind=kind,
            execution_id=execution_id,
        )
        fake._record(record)
        if fake.on_request is not None:
            fake.on_request(record)
        rule = fake._take_rule(kind)
        if rule is not None and rule.hang > 0:
            if fake._release.wait(rule.hang):
                return  # stopped while hanging: the connection is being dropped
        if rule is not None and rule.status is not None:
            status, answer = (
                rule.status,
                rule.body if rule.body is not None else {"detail": "scripted"},
            )
        else:
            status, answer = fake._default_answer(record)
        record.status = status
        payload = json.dumps(answer).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except OSError:
            record.status = None


class FakeControlPlane:
    """See the module docstring."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, prefix: str = PREFIX) -> None:
        self.host = host
        self.port = port
        self.prefix = prefix
        self.known_ids: set[str] | None = None  # set it to answer 404 for other ids
        # Called in the server thread with each request before it is answered (probes).
        self.on_request: Callable[[RecordedRequest], None] | None = None
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._requests: list[RecordedRequest] = []
        self._rules: list[_Rule] = []
        self._state = _State()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._release = threading.Event()
        self._timers: list[threading.Timer] = []

    # ------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        """Base URL to use as CONTROL_PLANE_URL."""
        if not self.port:
            raise RuntimeError("start() the fake control plane first")
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> FakeControlPlane:
        """Listen (again) on the same port."""
        if self._server is not None:
            return self
        self._release.clear()
        deadline = time.monotonic() + 5
        while True:
            try:
                server = _Server((self.host, self.port), self)
                break
            except OSError:
                if not self.port or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and drop every open connection: connections are then refused."""
        server, self._server = self._server, None
        if server is None:
            return
        self._release.set()
        server.shutdown()
        server.server_close()
        server.drop_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def down_for(self, seconds: float) -> None:
        """Go down now and come back on the same port after ``seconds``."""
        self.stop()
        timer = threading.Timer(seconds, self.start)
        timer.daemon = True
        self._timers.append(timer)
        timer.start()

    def close(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self.stop()

    def __enter__(self) -> FakeControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ behaviour
    def respond(
        self, status: int, *, kind: str | None = None, times: int | None = None, body: Any = None
    ) -> None:
        """Answer ``status`` to requests of ``kind`` (all kinds when None)."""
        with self._lock:
            self._rules.append(_Rule(kind=kind, status=status, times=times, body=body))

    def hang(self, seconds: float, *, kind: str | None = None, times: int | None = None) -> None:
        """Hold matching requests ``seconds`` before answering normally."""
        with self._lock:
            self._rules.append(_Rule(kind=kind, hang=seconds, times=times))

    def clear_rules(self) -> None:
        with self._lock:
            self._rules.clear()

    def _take_rule(self, kind: str) -> _Rule | None:
        with self._lock:
            for rule in self._rules:
                if rule.kind is not None and rule.kind != kind:
                    continue
                if rule.times is not None:
                    if rule.times <= 0:
                        continue
                    rule.times -= 1
                return rule
        return None

    # ------------------------------------------------------------------ recording
    def _record(self, record: RecordedRequest) -> None:
        with self._changed:
            self._requests.append(record)
            self._changed.notify_all()

    def requests(self, kind: str | None = None, execution_id: str | None = None) -> list[RecordedRequest]:
        """Recorded requests, oldest first, optionally filtered."""
        with self._lock:
            return [
                r
                for r in self._requests
                if (kind is None or r.kind == kind)
                and (execution_id is None or r.execution_id == execution_id)
            ]

    def wait_for(
        self,
        kind: str | None = None,
        count: int = 1,
        *,
        timeout: float = 5.0,
        execution_id: str | None = None,
        status: int | None = None,
    ) -> list[RecordedRequest]:
        """Block until ``count`` matching requests were recorded (and answered ``status``)."""
        deadline = time.monotonic() + timeout
        while True:
            found = [r for r in self.requests(kind, execution_id) if status is None or r.status == status]
            if len(found) >= count:
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                seen = [(r.kind, r.execution_id, r.status) for r in self.requests()]
                raise AssertionError(
                    f"waited {timeout}s for {count} {kind or 'any'} request(s)"
                    f"{' for ' + execution_id if execution_id else ''}; got {len(found)}; "
                    f"all: {seen}"
                )
            with self._changed:
                self._changed.wait(min(remaining, 0.05))

    def accepted_results(self) -> dict[str, dict[str, Any]]:
        """Result bodies the control plane stored (first write per id)."""
        with self._lock:
            return {k: dict(v) for k, v in self._state.results.items()}

    # ------------------------------------------------------------------ contract answers
    def _default_answer(self, record: RecordedRequest) -> tuple[int, Any]:
        if record.method != "POST" or record.kind == "other":
            return 404, {"detail": "Not Found"}
        try:
            body = json.loads(record.body, parse_constant=_reject_constant) if record.body else None
        except ValueError:
            return 422, {"detail": "body is not strict JSON"}
        if not isinstance(body, dict):
            return 422, {"detail": "body must be an object"}
        if record.kind == "result":
            return self._answer_result(record.execution_id or "", body)
        if record.kind == "ready":
            if not isinstance(body.get("container_id"), str) or not body["container_id"]:
                return 422, {"detail": "container_id is required"}
            return 200, {"status": "ok"}
        if record.kind == "heartbeat":
            if not isinstance(body.get("timestamp"), str):
                return 422, {"detail": "timestamp is required"}
            return 200, {"status": "ok"}
        return 200, {"status": "ok"}

    def _answer_result(self, execution_id: str, body: dict[str, Any]) -> tuple[int, Any]:
        if self.known_ids is not None and execution_id not in self.known_ids:
            return 404, {"detail": "execution not found"}
        if body.get("status") not in RESULT_STATUSES:
            return 400, {"detail": f"unknown status {body.get('status')!r}"}
        problems = _schema_problems(body)
        if problems:
            return 422, {"detail": problems}
        with self._lock:
            previous = self._state.results.get(execution_id)
            if previous is None:
                self._state.results[execution_id] = body
                return 201, {"status": "recorded"}
        if previous.get("status") == "crashed":
            return 409, {"detail": "execution is in a conflicting state"}
        return 200, {"status": "already recorded"}


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _schema_problems(body: dict[str, Any]) -> list[str]:
    problems = []
    if not isinstance(body.get("exit_code"), int) or isinstance(body.get("exit_code"), bool):
        problems.append("exit_code: int required")
    if not _is_number(body.get("execution_time")):
        problems.append("execution_time: number required")
    for name in ("stdout", "stderr"):
        if name in body and body[name] is not None and not isinstance(body[name], str):
            problems.append(f"{name}: string expected")
    artifacts = body.get("artifacts")
    if artifacts is not None and (
        not isinstance(artifacts, list) or not all(isinstance(a, str) for a in artifacts)
    ):
        problems.append("artifacts: list of strings expected")
    metrics = body.get("metrics")
    if metrics is not None:
        if not isinstance(metrics, dict) or not _is_number(metrics.get("duration_ms")):
            problems.append("metrics.duration_ms: number required")
    return problems


def free_port() -> int:
    """A TCP port nothing listens on right now (for 'refused from the start' scenarios)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
