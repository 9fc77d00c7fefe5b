"""Validation of the /execute request and the shape of results."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from sandbox_executor.config import Settings
from sandbox_executor.models import (
    MAX_CODE_BYTES,
    MAX_ENV_BYTES,
    MAX_ENV_VARS,
    ExecuteRequest,
    ExecutionResult,
    Metrics,
    Status,
    TerminationReason,
)


def _req(**overrides: Any) -> ExecuteRequest:
    values: dict[str, Any] = {
        "execution_id": "exec_20260101120000_0123abcd",
        "code": "x",
        "language": "python",
    }
    values.update(overrides)
    return ExecuteRequest(**values)


@pytest.mark.parametrize(
    "execution_id",
    ["exec_20260101120000_0123abcd", "a", "A-b_9", "x" * 128, "-", "_"],
)
def test_valid_execution_ids(execution_id: str) -> None:
    assert _req(execution_id=execution_id).execution_id == execution_id


@pytest.mark.parametrize(
    "execution_id",
    ["", "x" * 129, "a/b", "../etc", "a b", "a.b", "é", "a\nb", "a\x00", "id?x=1"],
)
def test_invalid_execution_ids(execution_id: str) -> None:
    with pytest.raises(ValidationError):
        _req(execution_id=execution_id)


def test_defaults_and_unknown_fields() -> None:
    req = _req(session_id="s1", something_new={"a": 1})
    assert req.timeout == 30
    assert req.event is None and req.effective_event() == {}
    assert req.env_vars == {} and req.stdin is None
    assert not hasattr(req, "something_new")


@pytest.mark.parametrize("language", ["python", "javascript", "shell"])
def test_languages(language: str) -> None:
    assert _req(language=language).language == language


@pytest.mark.parametrize("language", ["", "Python", "bash", "node", "ruby"])
def test_unknown_language(language: str) -> None:
    with pytest.raises(ValidationError):
        _req(language=language)


@pytest.mark.parametrize("timeout", [1, 2, 3600])
def test_timeout_in_range(timeout: int) -> None:
    assert _req(timeout=timeout).timeout == timeout


@pytest.mark.parametrize("timeout", [0, -1, 3601, 10**9])
def test_timeout_out_of_range(timeout: int) -> None:
    with pytest.raises(ValidationError):
        _req(timeout=timeout)


def test_code_of_exactly_one_mib_is_accepted() -> None:
    assert len(_req(code="a" * MAX_CODE_BYTES).code) == MAX_CODE_BYTES


def test_code_over_one_mib_is_rejected() -> None:
    with pytest.raises(ValidationError):
        _req(code="a" * (MAX_CODE_BYTES + 1))


def test_code_size_counts_utf8_bytes_not_characters() -> None:
    code = "é" * (MAX_CODE_BYTES // 2 + 1)  # fewer characters than the cap, more bytes
    assert len(code) < MAX_CODE_BYTES
    with pytest.raises(ValidationError, match="bytes"):
        _req(code=code)


def test_env_vars_accepted() -> None:
    env = {"A": "1", "_x": "", "LONG_NAME_9": "välue with spaces; $(rm -rf /)"}
    assert _req(env_vars=env).env_vars == env


@pytest.mark.parametrize("name", ["", "1A", "A-B", "A B", "A=B", "é", "A\x00", "x" * 129])
def test_invalid_env_names(name: str) -> None:
    with pytest.raises(ValidationError):
        _req(env_vars={name: "v"})


def test_env_value_with_nul_is_rejected() -> None:
    with pytest.raises(ValidationError):
        _req(env_vars={"A": "a\x00b"})


def test_env_value_with_lone_surrogate_is_rejected() -> None:
    with pytest.raises(ValidationError):
        _req(env_vars={"A": "a\ud800b"})


def test_reserved_env_name_is_rejected() -> None:
    with pytest.raises(ValidationError, match="reserved"):
        _req(env_vars={"SANDBOX_EVENT_FILE": "/etc/passwd"})


def test_env_total_size_is_capped() -> None:
    ok = {"A": "x" * (MAX_ENV_BYTES - 10)}
    assert _req(env_vars=ok).env_vars == ok
    with pytest.raises(ValidationError, match="total"):
        _req(env_vars={"A": "x" * MAX_ENV_BYTES})
    many = {f"V{i}": "x" * 300 for i in range(MAX_ENV_BYTES // 300 + 1)}
    assert len(many) <= MAX_ENV_VARS
    with pytest.raises(ValidationError, match="total"):
        _req(env_vars=many)


def test_env_count_is_capped() -> None:
    with pytest.raises(ValidationError):
        _req(env_vars={f"V{i}": "" for i in range(MAX_ENV_VARS + 1)})


def test_stdin_json_object_becomes_the_event_when_no_event() -> None:
    req = _req(stdin='{"a": 1}')
    assert req.event == {"a": 1} and req.effective_event() == {"a": 1}
    assert req.stdin == '{"a": 1}'  # still fed to the process


@pytest.mark.parametrize("stdin", ["[1, 2]", "42", "not json", '"s"', ""])
def test_stdin_that_is_not_an_object_is_not_an_event(stdin: str) -> None:
    req = _req(stdin=stdin)
    assert req.event is None and req.effective_event() == {}


def test_explicit_event_wins_over_stdin() -> None:
    req = _req(event={"e": 1}, stdin='{"s": 2}')
    assert req.event == {"e": 1}


def test_explicit_empty_event_wins_over_stdin() -> None:
    assert _req(event={}, stdin='{"s": 2}').event == {}


def test_event_must_be_an_object() -> None:
    with pytest.raises(ValidationError):
        _req(event=[1, 2])


def test_fingerprint_tells_retries_from_conflicts() -> None:
    assert _req().fingerprint() == _req().fingerprint()
    assert _req().fingerprint() != _req(code="y").fingerprint()


def test_result_callback_body_matches_the_contract() -> None:
    result = ExecutionResult(
        status=Status.TIMEOUT,
        exit_code=-1,
        execution_time=1.5,
        metrics=Metrics(duration_ms=1500.0),
        artifacts=["a.txt"],
        termination_reason=TerminationReason.TIMEOUT,
    )
    body = result.callback_body()
    assert body["status"] == "timeout" and body["exit_code"] == -1
    assert body["artifacts"] == ["a.txt"]
    assert body["metrics"]["duration_ms"] == 1500.0
    assert body["termination_reason"] == "timeout"
    assert {s.value for s in Status} == {"success", "failed", "timeout", "crashed"}


def test_clamp_timeout() -> None:
    s = Settings(max_timeout_seconds=10, default_timeout_seconds=5)
    assert s.clamp_timeout(None) == 5
    assert s.clamp_timeout(3) == 3
    assert s.clamp_timeout(600) == 10
    assert s.clamp_timeout(0) == 1
