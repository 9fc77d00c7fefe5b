"""Settings: unknown keyword arguments fail, unknown environment variables do not."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from sandbox_executor.config import Settings


def test_unknown_keyword_argument_is_rejected() -> None:
    with pytest.raises(ValidationError, match="state_dir"):
        Settings(state_dir="/tmp/x")  # type: ignore[call-arg]


def test_unknown_environment_variables_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    # The container environment carries S3 settings, SESSION_ID, PYTHONPATH...
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    monkeypatch.setenv("SOME_SETTING_WE_NEVER_HAD", "1")
    monkeypatch.setenv("MAX_QUEUED_EXECUTIONS", "7")
    assert Settings().max_queued_executions == 7


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, 5.0),
        ({"HEARTBEAT_INTERVAL": "2.5"}, 2.5),
        ({"HEARTBEAT_INTERVAL_SECONDS": "3"}, 3.0),
        ({"HEARTBEAT_INTERVAL": "2.5", "HEARTBEAT_INTERVAL_SECONDS": "3"}, 3.0),
    ],
)
def test_heartbeat_interval_old_and_new_names(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: float
) -> None:
    for name in ("HEARTBEAT_INTERVAL", "HEARTBEAT_INTERVAL_SECONDS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert Settings().heartbeat_interval_seconds == expected


def test_heartbeat_interval_keyword_new_name() -> None:
    assert Settings(heartbeat_interval_seconds=0.5).heartbeat_interval_seconds == 0.5
