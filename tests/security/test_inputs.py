"""Inputs: hostile requests are refused with a JSON 400 (or run harmlessly), never a 500,
a crash, a file outside the results directory, or code injected into the bootstrap."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.security.helpers import LANGUAGES, Daemon, new_id, strict_json

OK_CODE = "def handler(event):\n    return 'ran'\n"


def _assert_400(daemon: Daemon, body: dict[str, Any] | bytes) -> dict[str, Any]:
    resp = daemon.post(body)
    assert resp.status_code == 400, (resp.status_code, resp.text[:500])
    error = strict_json(resp.content)
    assert set(error) >= {"error_code", "description", "request_id"}, error
    return error


def _result_files(daemon: Daemon) -> set[str]:
    found = set()
    for path in daemon.server.results_dir.parent.rglob("*"):
        found.add(str(path.relative_to(daemon.server.results_dir.parent)))
    return found


BAD_IDS = [
    "../etc/passwd",
    "..",
    "a/../../b",
    "a/b",
    "x\x00y",
    "a" * 129,
    "a" * 200,
    "",
    " ",
    "a b",
    "caf\u00e9",
    "id;rm -rf /",
    "$(id)",
    "a\nb",
    "%2e%2e%2f",
]


@pytest.mark.parametrize("execution_id", BAD_IDS, ids=range(len(BAD_IDS)))
def test_hostile_execution_ids_are_refused(daemon: Daemon, execution_id: str) -> None:
    before = _result_files(daemon)
    _assert_400(daemon, {"execution_id": execution_id, "code": OK_CODE, "language": "python"})
    resp = daemon.client.get("/executions/" + execution_id.replace("\x00", "%00").replace("\n", "%0A"))
    if resp.status_code == 307:  # a trailing slash: redirected to the same route without it
        assert resp.headers["location"].startswith(daemon.server.url + "/executions/")
    else:
        assert resp.status_code in (400, 404, 405), resp.status_code
        strict_json(resp.content)
    assert _result_files(daemon) == before
    daemon.assert_survived()


def test_a_128_character_id_is_the_longest_accepted(daemon: Daemon) -> None:
    result = daemon.execute(OK_CODE, execution_id="a" * 128)
    assert result["execution_id"] == "a" * 128 and result["return_value"] == "ran"


BAD_ENV: list[dict[str, Any]] = [
    {"A=B": "1"},
    {"A\x00B": "1"},
    {"": "1"},
    {"1ABC": "1"},
    {"A B": "1"},
    {"A-B": "1"},
    {"OK": "nul\x00inside"},
    {"OK": "x" * (1024 * 1024)},
    {f"V{i}": "x" for i in range(300)},
    {"SANDBOX_EVENT_FILE": "/etc/passwd"},
    {"OK": 5},
    {"OK": None},
]


@pytest.mark.parametrize("env", BAD_ENV, ids=range(len(BAD_ENV)))
def test_hostile_env_vars_are_refused(daemon: Daemon, env: dict[str, Any]) -> None:
    _assert_400(daemon, {"execution_id": new_id(), "code": OK_CODE, "language": "python", "env_vars": env})
    daemon.assert_survived()


INJECTION_VALUES = {
    "QUOTE": "'; echo INJECTED; '",
    "DQUOTE": '"; echo INJECTED; "',
    "SUBST": "$(echo INJECTED)`echo INJECTED`",
    "NEWLINE": "line1\necho INJECTED\nline3",
    "BACKSLASH": "\\'\\\"\\\\",
    "UNICODE": "caf\u00e9 \u202e \U0001f600",
    "BIG": "v" * 60_000,
}
ECHO_ENV = {
    "python": "import os\ndef handler(event):\n    return {k: os.environ[k] for k in event['names']}\n",
    "javascript": (
        "exports.handler = async (event) => "
        "Object.fromEntries(event.names.map((k) => [k, process.env[k]]));\n"
    ),
    "shell": 'python3 -c "import json, os; '
    f'print(json.dumps({{k: os.environ[k] for k in {sorted(INJECTION_VALUES)!r}}}))"\n',
}


@pytest.mark.parametrize("language", LANGUAGES)
def test_env_values_cannot_inject_code(daemon: Daemon, language: str) -> None:
    result = daemon.attack(
        ECHO_ENV[language], language, env_vars=INJECTION_VALUES, event={"names": sorted(INJECTION_VALUES)}
    )
    assert result["status"] == "success", result["stderr"][-1000:]
    got = json.loads(result["stdout"]) if language == "shell" else result["return_value"]
    assert got == INJECTION_VALUES
    assert "INJECTED" not in result["stdout"].replace("echo INJECTED", "")


def test_non_utf8_and_surrogate_code_is_refused(daemon: Daemon) -> None:
    _assert_400(daemon, b'{"execution_id": "bad_utf8", "language": "python", "code": "\xff\xfe\x80"}')
    _assert_400(daemon, {"execution_id": new_id(), "language": "python", "code": "x = '\ud800'\n"})
    # A NUL in the code is either refused or fails to compile in the sandbox.
    resp = daemon.post({"execution_id": new_id(), "language": "python", "code": "nul\x00byte"})
    assert resp.status_code == 400 or strict_json(resp.content)["status"] == "failed", resp.text[:300]
    _assert_400(daemon, {"execution_id": new_id(), "language": "python", "code": "x" * (1024 * 1024 + 1)})
    daemon.assert_survived()


@pytest.mark.parametrize("language", LANGUAGES)
def test_surrogates_in_the_event_are_harmless(daemon: Daemon, language: str) -> None:
    code = {
        "python": "def handler(event):\n    return len(event['s'])\n",
        "javascript": "exports.handler = async (event) => event.s.length;\n",
        "shell": 'wc -c < "$SANDBOX_EVENT_FILE"\n',
    }[language]
    resp = daemon.post(
        {"execution_id": new_id(), "language": language, "code": code, "event": {"s": "\ud800\udfff\udc00x"}}
    )
    assert resp.status_code in (200, 400), resp.text[:500]
    strict_json(resp.content)
    daemon.assert_survived(language)


@pytest.mark.parametrize("language", LANGUAGES)
def test_a_one_mib_event_is_delivered(daemon: Daemon, language: str) -> None:
    blob = "e" * (1024 * 1024)
    code = {
        "python": "def handler(event):\n    return len(event['blob'])\n",
        "javascript": "exports.handler = async (event) => event.blob.length;\n",
        "shell": "python3 -c \"import json; print(len(json.load(open('$SANDBOX_EVENT_FILE'))['blob']))\"\n",
    }[language]
    result = daemon.attack(code, language, event={"blob": blob})
    assert result["status"] == "success", result["stderr"][-500:]
    got = int(result["stdout"]) if language == "shell" else result["return_value"]
    assert got == len(blob)


def test_a_body_over_the_cap_is_refused(daemon: Daemon) -> None:
    _assert_400(
        daemon,
        {
            "execution_id": new_id(),
            "language": "python",
            "code": OK_CODE,
            "event": {"blob": "e" * (17 * 1024 * 1024)},
        },
    )
    daemon.assert_survived()


@pytest.mark.parametrize("depth", [900, 5000, 200_000])
def test_deeply_nested_json(daemon: Daemon, depth: int) -> None:
    nested = "[" * depth + "]" * depth
    body = (
        f'{{"execution_id": "{new_id()}", "language": "python", '
        f'"code": "def handler(e):\\n    return 1\\n", "event": {{"a": {nested}}}}}'
    ).encode()
    resp = daemon.post(body)
    # Either parsed and run, or refused as invalid: never a 500 or a dead daemon.
    assert resp.status_code in (200, 400), (resp.status_code, resp.text[:300])
    strict_json(resp.content)
    daemon.assert_survived()


BAD_FIELDS: list[dict[str, Any]] = [
    {"timeout": 0},
    {"timeout": -1},
    {"timeout": 3601},
    {"timeout": 10**30},
    {"timeout": "30s"},
    {"timeout": 1.5},
    {"language": "python; rm -rf /"},
    {"language": "ruby"},
    {"code": None},
    {"event": [1, 2]},
    {"event": "{}"},
    {"env_vars": ["A=1"]},
]


@pytest.mark.parametrize("fields", BAD_FIELDS, ids=range(len(BAD_FIELDS)))
def test_other_malformed_fields(daemon: Daemon, fields: dict[str, Any]) -> None:
    body = {"execution_id": new_id(), "language": "python", "code": OK_CODE, **fields}
    _assert_400(daemon, body)


def test_malformed_bodies(daemon: Daemon) -> None:
    for raw in (
        b"",
        b"null",
        b"[]",
        b"{",
        b'{"execution_id": NaN}',
        b"\x00" * 100,
        b'{"execution_id": "a", "execution_id": "b"}',
    ):
        resp = daemon.post(raw)
        assert resp.status_code == 400, (raw, resp.status_code)
        strict_json(resp.content)
    daemon.assert_survived()


@pytest.mark.parametrize("depth", [300, 200_000])
def test_deeply_nested_json_on_stdin(daemon: Daemon, depth: int) -> None:
    # Without an event, a JSON object on stdin becomes the event: the same limits apply.
    stdin = '{"a": ' + "[" * depth + "]" * depth + "}"
    resp = daemon.post({"execution_id": new_id(), "language": "python", "code": OK_CODE, "stdin": stdin})
    assert resp.status_code in (200, 400), (resp.status_code, resp.text[:300])
    strict_json(resp.content)
    daemon.assert_survived()
