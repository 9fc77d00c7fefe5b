"""The bodies the control plane reads, as models written from docs/CONTRACT.md.

Strict: a field the contract types as a string rejects null and numbers (the control
plane's own response models fail on null, docs/CONTRACT.md section 1); a field it calls
optional may be absent, not null. Extra fields are allowed: the control plane ignores them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field


def _iso8601(value: str) -> str:
    parsed = datetime.fromisoformat(value)
    assert parsed.tzinfo is not None, f"{value} has no UTC offset"
    return value


Iso8601 = Annotated[str, AfterValidator(_iso8601)]


class Contract(BaseModel):
    # strict: no coercion, so a str field rejects null and numbers; extras are allowed
    # because the control plane ignores them.
    model_config = ConfigDict(strict=True, extra="allow")


# ---------------------------------------------------------------- section 1: our answers
class ExecuteAnswer(Contract):
    execution_id: str
    status: str
    message: str


class ErrorAnswer(Contract):
    # The control plane only needs JSON here; our documented shape, with no nulls.
    error_code: str
    description: str
    error_detail: str | list[Any] | dict[str, Any]
    solution: str
    request_id: str


class InstalledDependency(Contract):
    name: str
    version: str
    install_location: str
    install_time: Iso8601
    is_from_template: bool


class SyncAnswer(Contract):
    status: str
    installed_dependencies: list[InstalledDependency]
    error: str
    started_at: Iso8601
    completed_at: Iso8601


# ---------------------------------------------------------------- section 2: callbacks
class ResultMetrics(Contract):
    duration_ms: float
    cpu_time_ms: float = 0.0
    peak_memory_mb: float = 0.0
    io_read_bytes: int = 0
    io_write_bytes: int = 0


class ResultBody(Contract):
    status: Literal["success", "failed", "timeout", "crashed"]
    stdout: str
    stderr: str
    exit_code: int
    execution_time: float
    return_value: Any = None
    metrics: ResultMetrics | None = None
    artifacts: list[str]


class HeartbeatBody(Contract):
    timestamp: Iso8601
    progress: dict[str, Any]


class ReadyBody(Contract):
    container_id: str = Field(min_length=1)
    pod_name: str = ""
    executor_port: int
    ready_at: Iso8601


class ExitedBody(Contract):
    container_id: str = Field(min_length=1)
    pod_name: str
    exit_code: int
    exit_reason: str
    exited_at: Iso8601
