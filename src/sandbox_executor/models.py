"""Request and result schemas shared by the engine, the API, the CLI and the callbacks."""

from __future__ import annotations

import json
import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

EXECUTION_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
MAX_CODE_BYTES = 1024 * 1024
MAX_ENV_BYTES = 64 * 1024
MAX_ENV_VARS = 256
# Variables that would let user-provided values steer the sandbox's own bootstrap.
RESERVED_ENV_NAMES = frozenset({"SANDBOX_EVENT_FILE"})
# Nesting depth allowed in events and return values: the JSON serializer of responses and
# callbacks gives up near 250 levels, so anything deeper could be accepted but never answered.
MAX_JSON_DEPTH = 128

Language = Literal["python", "javascript", "shell"]
# Schema-level constraints, so /openapi.json tells clients what is accepted; the validators
# below add what JSON Schema cannot say (byte sizes, totals).
EnvName = Annotated[str, StringConstraints(pattern=ENV_NAME_RE.pattern)]
EnvValue = Annotated[str, StringConstraints(max_length=MAX_ENV_BYTES, pattern=r"^[^\x00]*$")]


class Status(StrEnum):
    """Final status vocabulary of the control plane (``error`` is rejected there)."""

    SUCCESS = "success"
    FAILED = "failed"
    TIMEOUT = "timeout"
    CRASHED = "crashed"


class TerminationReason(StrEnum):
    """Why the run ended; travels beside ``status`` as an extra field."""

    EXITED = "exited"
    SIGNALED = "signaled"
    TIMEOUT = "timeout"
    MEMORY_LIMIT = "memory_limit"
    DISK_LIMIT = "disk_limit"
    SANDBOX_ERROR = "sandbox_error"
    SHUTDOWN = "shutdown"
    # The daemon was killed (OOM, node trouble) while the execution was accepted.
    RESTARTED = "restarted"


class ExecuteRequest(BaseModel):
    """Body of ``POST /execute`` (docs/CONTRACT.md section 1). Unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=False)

    execution_id: str = Field(pattern=EXECUTION_ID_RE.pattern, examples=["exec_20260101120000_0123abcd"])
    session_id: str | None = Field(default=None, max_length=256)
    code: str = Field(max_length=MAX_CODE_BYTES, description="at most 1 MiB of UTF-8")
    language: Language
    timeout: int = Field(default=30, ge=1, le=3600)
    event: dict[str, Any] | None = None
    env_vars: dict[EnvName, EnvValue] = Field(
        default_factory=dict,
        max_length=MAX_ENV_VARS,
        json_schema_extra={"additionalProperties": False},
    )
    stdin: str | None = None

    @field_validator("code")
    @classmethod
    def _code_size(cls, value: str) -> str:
        size = len(value.encode("utf-8", "surrogatepass"))
        if size > MAX_CODE_BYTES:
            raise ValueError(f"code is {size} bytes; the limit is {MAX_CODE_BYTES} bytes (1 MiB)")
        return value

    @field_validator("env_vars")
    @classmethod
    def _env_vars(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > MAX_ENV_VARS:
            raise ValueError(f"at most {MAX_ENV_VARS} environment variables are allowed")
        total = 0
        for name, val in value.items():
            if not ENV_NAME_RE.match(name):
                raise ValueError(
                    f"invalid environment variable name {name[:64]!r}: "
                    "use letters, digits and underscores, not starting with a digit"
                )
            if name in RESERVED_ENV_NAMES:
                raise ValueError(f"environment variable {name} is reserved by the executor")
            if "\x00" in val:
                raise ValueError(f"environment variable {name} contains a NUL character")
            try:
                val.encode("utf-8")
            except UnicodeEncodeError:
                # A lone surrogate (valid as a JSON escape) cannot be put in an environment.
                raise ValueError(
                    f"environment variable {name} contains a lone surrogate (not valid Unicode)"
                ) from None
            total += len(name) + len(val.encode("utf-8", "surrogatepass")) + 2
        if total > MAX_ENV_BYTES:
            raise ValueError(f"environment variables total {total} bytes; the limit is {MAX_ENV_BYTES}")
        return value

    @model_validator(mode="after")
    def _event_from_stdin(self) -> ExecuteRequest:
        # Older callers sent the event as JSON on stdin; honour it when no event is given.
        if self.event is None and self.stdin:
            try:
                parsed = json.loads(self.stdin)
            except (ValueError, RecursionError):
                parsed = None
            if isinstance(parsed, dict):
                self.event = parsed
        # The event only travels to the sandbox (ASCII-escaped), so only its depth matters.
        problem = json_problem(self.event, text=False)
        if problem is not None:
            raise ValueError(f"event: {problem}")
        return self

    def effective_event(self) -> dict[str, Any]:
        return self.event if self.event is not None else {}

    def fingerprint(self) -> str:
        """Stable digest of the payload, to tell a retry from a conflicting reuse of an id."""
        import hashlib

        payload = self.model_dump(mode="json")
        blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(blob.encode()).hexdigest()


class Metrics(BaseModel):
    """Resource accounting of the sandbox's whole process tree."""

    duration_ms: float
    cpu_time_ms: float | None = None
    peak_memory_mb: float | None = None
    io_read_bytes: int | None = None
    io_write_bytes: int | None = None


class ArtifactDetail(BaseModel):
    """A workspace file this run created or modified."""

    path: str
    size: int
    mime_type: str
    sha256: str | None = None
    change: Literal["created", "modified"]


class ExecutionResult(BaseModel):
    """What one execution produced; the callback body of docs/CONTRACT.md section 2 plus extras."""

    status: Status
    exit_code: int
    stdout: str = ""
    stderr: str = ""
    execution_time: float
    return_value: Any = None
    metrics: Metrics | None = None
    artifacts: list[str] = Field(default_factory=list)
    termination_reason: TerminationReason
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    artifact_details: list[ArtifactDetail] = Field(default_factory=list)
    artifacts_truncated: bool = False
    error: str | None = None

    @classmethod
    def crashed(cls, message: str, reason: TerminationReason, elapsed: float = 0.0) -> ExecutionResult:
        """A run that never produced a result of its own (sandbox error, shutdown)."""
        return cls(
            status=Status.CRASHED,
            exit_code=-1,
            stderr=message,
            execution_time=round(elapsed, 6),
            metrics=Metrics(duration_ms=round(elapsed * 1000, 3)),
            termination_reason=reason,
            error=message,
        )

    def callback_body(self) -> dict[str, Any]:
        """JSON body for the control plane's result route (never NaN/Infinity)."""
        return self.model_dump(mode="json")


def json_problem(value: Any, max_depth: int = MAX_JSON_DEPTH, *, text: bool = True) -> str | None:
    """Why ``value`` (parsed JSON) cannot be answered as JSON, or None if it can.

    Iterative, so hostile depth cannot exhaust the stack: too deeply nested, or (``text``)
    a string holding a lone surrogate (a legal JSON escape that UTF-8 cannot encode).
    """
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str) and text:
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return "contains a lone surrogate, which is not Unicode text"
        elif isinstance(item, dict | list):
            if depth >= max_depth:
                return f"nested deeper than {max_depth} levels"
            if isinstance(item, dict):
                stack.extend((k, depth) for k in item)
                stack.extend((v, depth + 1) for v in item.values())
            else:
                stack.extend((v, depth + 1) for v in item)
    return None
