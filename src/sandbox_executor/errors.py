"""API errors with the JSON body the control plane reads on 4xx/5xx.

Body: ``{"error_code", "description", "error_detail", "solution", "request_id"}``; the
request id is filled in by the API layer.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error answered to the client as JSON with ``status_code``."""

    def __init__(
        self,
        status_code: int,
        error_code: str,
        description: str,
        error_detail: Any = None,
        solution: str = "",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(description)
        self.status_code = status_code
        self.error_code = error_code
        self.description = description
        self.error_detail = error_detail
        self.solution = solution
        self.headers = headers or {}

    def body(self, request_id: str) -> dict[str, Any]:
        return {
            "error_code": self.error_code,
            "description": self.description,
            "error_detail": self.error_detail,
            "solution": self.solution,
            "request_id": request_id,
        }


def validation_error(description: str, detail: Any = None, solution: str = "") -> ApiError:
    """400 Executor.ValidationError."""
    return ApiError(
        400, "Executor.ValidationError", description, detail, solution or "Fix the request and retry."
    )
