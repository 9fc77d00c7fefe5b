"""api.py's one table from domain errors to HTTP statuses and headers."""

from __future__ import annotations

import pytest

from sandbox_executor.api import STATUS_BY_ERROR, error_headers, status_for
from sandbox_executor.errors import (
    Busy,
    Conflict,
    ExecutorError,
    InstallFailed,
    InternalError,
    InvalidRequest,
    NotFound,
    PathRefused,
    PayloadTooLarge,
    QueueFull,
    SandboxStartError,
    ShuttingDown,
    StorageUnavailable,
    Unauthorized,
    Unavailable,
)


@pytest.mark.parametrize(
    ("error", "status", "headers"),
    [
        (InvalidRequest("bad"), 400, {}),
        (PathRefused("link"), 403, {}),
        (PayloadTooLarge("big"), 413, {}),
        (Unauthorized("who"), 401, {"WWW-Authenticate": "Bearer"}),
        (NotFound("gone"), 404, {}),
        (Conflict("taken"), 409, {}),
        (InstallFailed("pip"), 422, {}),
        (InternalError("oops"), 500, {}),
        (SandboxStartError("bwrap"), 500, {}),  # through its parent InternalError
        (ExecutorError("unclassified"), 500, {}),
        (Unavailable("later"), 503, {"Retry-After": "5"}),
        (QueueFull("full", retry_after=1), 503, {"Retry-After": "1"}),
        (ShuttingDown("bye"), 503, {"Retry-After": "5"}),
        (Busy("sync running", retry_after=10), 503, {"Retry-After": "10"}),
        (StorageUnavailable("disk"), 503, {"Retry-After": "5"}),
        (Unavailable("no retry hint", retry_after=None), 503, {}),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else None,
)
def test_each_domain_error_has_one_status(error: ExecutorError, status: int, headers: dict[str, str]) -> None:
    assert status_for(error) == status
    assert error_headers(error) == headers


def test_a_new_subclass_inherits_its_parents_status() -> None:
    class DiskGone(StorageUnavailable):
        error_code = "Executor.DiskGone"

    assert DiskGone not in STATUS_BY_ERROR
    assert status_for(DiskGone("x")) == 503


def test_body_never_carries_null() -> None:
    body = ShuttingDown("bye").body("rid")
    assert body == {
        "error_code": "Executor.ShuttingDown",
        "description": "bye",
        "error_detail": "",
        "solution": "Retry on another executor.",
        "request_id": "rid",
    }
