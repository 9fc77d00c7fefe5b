"""The JSON bodies of the callbacks (docs/CONTRACT.md section 2).

Strict JSON (no NaN or Infinity) and no null where the control plane reads a value: a
string field gets a string, an optional number is left out rather than sent as null.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

from ..config import Settings
from ..models import ExecutionResult


def utc_now_iso() -> str:
    """ISO 8601 UTC timestamp with an explicit offset."""
    return datetime.now(UTC).isoformat()


def encode_json(value: Any) -> bytes:
    """Compact JSON; raises ValueError on NaN/Infinity instead of emitting invalid JSON."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


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


def identity(settings: Settings) -> dict[str, Any]:
    """container_id and pod_name of the lifecycle callbacks."""
    return {
        "container_id": settings.container_identity,
        # A string, never null: without POD_NAME the hostname is the pod name.
        "pod_name": settings.pod_name or settings.container_identity,
    }


def ready_body(settings: Settings) -> dict[str, Any]:
    """containers/ready: the only thing that lets the session run anything."""
    return {**identity(settings), "executor_port": settings.executor_port, "ready_at": utc_now_iso()}


def exited_body(settings: Settings, exit_code: int, exit_reason: str) -> dict[str, Any]:
    """containers/exited, sent once at shutdown."""
    return {
        **identity(settings),
        "exit_code": exit_code,
        "exit_reason": exit_reason,
        "exited_at": utc_now_iso(),
    }


def heartbeat_body(elapsed_seconds: float, beat: int) -> dict[str, Any]:
    """executions/{id}/heartbeat (the control plane ignores ``progress`` today)."""
    return {
        "timestamp": utc_now_iso(),
        "progress": {"state": "running", "elapsed_seconds": round(elapsed_seconds, 3), "beat": beat},
    }
