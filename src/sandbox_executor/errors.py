"""The executor's domain errors: one base, a stable error code per kind.

Domain code raises these and never chooses an HTTP status; ``api.py`` maps each kind to
one in a single table (``STATUS_BY_ERROR``). The JSON body the control plane reads on
4xx/5xx is ``{"error_code", "description", "error_detail", "solution", "request_id"}``.

    ExecutorError
    ├── InvalidRequest ............ Executor.ValidationError
    │   ├── PathRefused ........... Executor.PathRefused
    │   └── PayloadTooLarge ....... Executor.PayloadTooLarge
    ├── Unauthorized .............. Executor.Unauthorized
    ├── NotFound .................. Executor.NotFound
    ├── Conflict .................. Executor.Conflict
    ├── InstallFailed ............. Executor.DependencyInstallFailed
    ├── Unavailable ............... Executor.Unavailable      (comes with Retry-After)
    │   ├── QueueFull ............. Executor.QueueFull
    │   ├── ShuttingDown .......... Executor.ShuttingDown
    │   ├── Busy .................. Executor.Busy
    │   └── StorageUnavailable .... Executor.StorageUnavailable
    └── InternalError ............. Executor.InternalError
        └── SandboxStartError ..... Executor.SandboxStartError
"""

from __future__ import annotations

from typing import Any, ClassVar


class ExecutorError(Exception):
    """Base of every error the executor reports to a caller."""

    error_code: ClassVar[str] = "Executor.Error"
    default_solution: ClassVar[str] = ""

    def __init__(
        self,
        description: str,
        detail: Any = None,
        solution: str | None = None,
        *,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(description)
        self.description = description
        self.detail = detail
        self.solution = self.default_solution if solution is None else solution
        self.retry_after = retry_after

    def body(self, request_id: str) -> dict[str, Any]:
        """The JSON error body of docs/CONTRACT.md section 1 (no null: a missing detail is "")."""
        return {
            "error_code": self.error_code,
            "description": self.description,
            "error_detail": "" if self.detail is None else self.detail,
            "solution": self.solution,
            "request_id": request_id,
        }


class InvalidRequest(ExecutorError):
    """The request cannot be accepted as sent; nothing ran."""

    error_code = "Executor.ValidationError"
    default_solution = "Fix the request and retry."


class PathRefused(InvalidRequest):
    """A workspace path the file routes never serve: outside the workspace, through or onto
    a symbolic link, or naming a FIFO, socket or device."""

    error_code = "Executor.PathRefused"
    default_solution = (
        "Name a regular file or directory by its path relative to the workspace, "
        "without '..' and without symbolic links."
    )


class PayloadTooLarge(InvalidRequest):
    """An upload over its cap (MAX_UPLOAD_BYTES), or one the workspace has no room for."""

    error_code = "Executor.PayloadTooLarge"


class Unauthorized(ExecutorError):
    """Missing or wrong bearer token."""

    error_code = "Executor.Unauthorized"
    default_solution = "Send Authorization: Bearer <EXECUTOR_API_TOKEN>."


class NotFound(ExecutorError):
    """No such execution, file or route."""

    error_code = "Executor.NotFound"


class Conflict(ExecutorError):
    """The request conflicts with what exists: its id is taken by a different request, or
    the workspace holds a directory where it names a file (or the reverse)."""

    error_code = "Executor.Conflict"
    default_solution = "Use a new execution_id for a different request."


class InstallFailed(ExecutorError):
    """pip could not install the requested set; the previous set stays installed."""

    error_code = "Executor.DependencyInstallFailed"
    default_solution = (
        "Check the package names, versions and the index URL; the previous set stays installed."
    )


class Unavailable(ExecutorError):
    """Temporarily unable to take the request; retry after ``retry_after`` seconds."""

    error_code = "Executor.Unavailable"

    def __init__(
        self,
        description: str,
        detail: Any = None,
        solution: str | None = None,
        *,
        retry_after: int | None = 5,
    ) -> None:
        super().__init__(description, detail, solution, retry_after=retry_after)


class QueueFull(Unavailable):
    error_code = "Executor.QueueFull"
    default_solution = "Retry after the delay in Retry-After."


class ShuttingDown(Unavailable):
    error_code = "Executor.ShuttingDown"
    default_solution = "Retry on another executor."


class Busy(Unavailable):
    error_code = "Executor.Busy"


class StorageUnavailable(Unavailable):
    """An acceptance or result cannot be made durable (RESULTS_DIR unwritable or full)."""

    error_code = "Executor.StorageUnavailable"
    default_solution = "Free space in RESULTS_DIR or make it writable; accepting resumes by itself."


class InternalError(ExecutorError):
    """A fault of the executor or its host, never of the caller."""

    error_code = "Executor.InternalError"


class SandboxStartError(InternalError):
    """A sandbox could not be started at all (bwrap missing, namespaces refused, fds)."""

    error_code = "Executor.SandboxStartError"
