"""HTTP to the daemon under test (always on the host's loopback)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from . import podman


@dataclass(frozen=True)
class Daemon:
    """The executor in one container: its loopback URL, its API token, its container."""

    base: str
    token: str
    container: str

    def call(self, method: str, path: str, body: Any = None, timeout: float = 30) -> tuple[int, Any]:
        """(status, decoded JSON or text). Raises OSError when nothing answers."""
        data = json.dumps(body).encode() if body is not None else None
        # Only http://127.0.0.1 URLs built by this package reach here.
        request = urllib.request.Request(self.base + path, data=data, method=method)  # noqa: S310
        request.add_header("content-type", "application/json")
        if self.token:
            request.add_header("authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
                return response.status, _decode(response.read(), response.headers.get_content_type())
        except urllib.error.HTTPError as exc:
            return exc.code, _decode(exc.read(), exc.headers.get_content_type())

    def execute(self, body: dict[str, Any], timeout: float = 60) -> tuple[int, Any, float]:
        """POST /execute?wait=true: (status, result, seconds); status 0 when nothing answered."""
        started = time.monotonic()
        try:
            status, result = self.call("POST", "/execute?wait=true", body, timeout=timeout)
        except OSError as exc:
            return 0, {"error": f"no answer: {exc}"}, time.monotonic() - started
        return status, result, time.monotonic() - started

    def healthy(self, timeout: float = 2) -> bool:
        try:
            status, _ = self.call("GET", "/health", timeout=timeout)
        except OSError:
            return False
        return status == 200

    def wait_healthy(self, timeout: float) -> float | None:
        """Poll /health until 200: the time it answered, or None (also if the container died)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.healthy(timeout=1):
                return time.monotonic()
            if podman.state(self.container) in ("exited", "stopped", ""):
                return None
            time.sleep(0.05)
        return None


def _decode(raw: bytes, content_type: str) -> Any:
    if content_type == "application/json" and raw:
        try:
            return json.loads(raw)
        except ValueError:
            pass
    return raw.decode("utf-8", "replace")
