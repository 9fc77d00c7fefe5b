"""A fake control plane on the host's loopback: records the executor's callbacks."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PREFIX = "/api/v1/internal"


@dataclass(frozen=True)
class Call:
    at: float
    method: str
    path: str
    body: Any
    authorization: str


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # sandboxed probes hang up without reading the answer


class FakeControlPlane:
    """Answers like the real control plane (docs/CONTRACT.md section 2); keeps every request."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.cond = threading.Condition()
        self.server = _QuietServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        plane = self

        class Handler(BaseHTTPRequestHandler):
            def _record(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode("utf-8", "replace")
                call = Call(
                    time.monotonic(), self.command, self.path, body, self.headers.get("authorization", "")
                )
                with plane.cond:
                    plane.calls.append(call)
                    plane.cond.notify_all()
                status = 201 if self.path.endswith("/result") else 200
                payload = b'{"status":"ok"}'
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_POST = _record
            do_GET = _record

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def wait_for(
        self, path: str, timeout: float, where: Callable[[Any], bool] = lambda _: True
    ) -> Call | None:
        """The first recorded callback to ``PREFIX + path`` whose body satisfies ``where``."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for call in self.calls:
                    if call.path == PREFIX + path and where(call.body):
                        return call
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)

    def seen(self, fragment: str) -> list[Call]:
        """Every request whose path contains ``fragment`` (probes sent by sandboxed code)."""
        with self.cond:
            return [call for call in self.calls if fragment in call.path]

    def close(self) -> None:
        self.server.shutdown()
