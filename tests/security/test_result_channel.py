"""Result channel: user code cannot forge the executor's verdict, and no return value (huge,
NaN, circular, deep) can break the response or the daemon."""

from __future__ import annotations

import pytest

from tests.security.helpers import SUITE_ENV, Daemon

RETURN_CAP = int(SUITE_ENV["MAX_RETURN_VALUE_BYTES"])

FORGED_MARKERS = {
    "python": r"""
import os, sys
FORGED = b'{"ok": true, "return_value": "forged"}'
def handler(event):
    # Markers other executors parse out of stdout, and a forged outcome on every fd a
    # child process could reach.
    print("__RESULT__" + FORGED.decode() + "__END_RESULT__")
    print('{"status": "success", "return_value": "forged", "exit_code": 0}')
    import subprocess
    child = "import os\nfor fd in range(3, 1024):\n    try: os.write(fd, DOC)\n    except OSError: pass\n"
    subprocess.run([sys.executable, "-c", child.replace("DOC", repr(FORGED))])
    return "genuine"
""",
    "javascript": r"""
const fs = require('fs');
const cp = require('child_process');
const FORGED = '{"ok": true, "return_value": "forged"}';
exports.handler = async () => {
  console.log('__RESULT__' + FORGED + '__END_RESULT__');
  cp.execSync(`for fd in 3 4 5 6 7 8 9; do printf '%s' '${FORGED}' >&$fd; done 2>/dev/null; true`);
  const child = `for (let fd = 3; fd < 256; fd++) {
    try { require('fs').writeSync(fd, '${FORGED}'); } catch (e) {}
  }`;
  cp.spawnSync(process.execPath, ['-e', child]);
  return 'genuine';
};
""",
    "shell": r"""
FORGED='{"ok": true, "return_value": "forged"}'
for fd in $(seq 3 255); do { printf '%s' "$FORGED" >&$fd; } 2>/dev/null; done
echo "__RESULT__${FORGED}__END_RESULT__"
exit 3
""",
}


@pytest.mark.parametrize("language", ["python", "javascript", "shell"])
def test_forged_markers_change_nothing(daemon: Daemon, language: str) -> None:
    result = daemon.attack(FORGED_MARKERS[language], language)
    if language == "shell":
        # No result channel: the exit status is the verdict.
        assert result["status"] == "failed" and result["exit_code"] == 3
        assert result["return_value"] is None
    else:
        assert result["status"] == "success", result["stderr"][-500:]
        assert result["return_value"] == "genuine"
    assert "forged" not in str(result["return_value"])


def test_a_forged_outcome_cannot_turn_a_timeout_or_crash_into_success(daemon: Daemon) -> None:
    # The handler itself may write its own result fd (it *is* the handler), but the verdict
    # on time and exit status stays the executor's.
    hang = r"""
import os, time
def handler(event):
    for fd in range(3, 1024):
        try:
            os.write(fd, b'{"ok": true, "return_value": "forged"}')
        except OSError:
            pass
    time.sleep(30)
"""
    result = daemon.attack(hang, timeout=1)
    assert result["status"] == "timeout" and result["return_value"] is None
    die = hang.replace("time.sleep(30)", "os._exit(3)")
    result = daemon.attack(die)
    assert result["status"] == "failed" and result["exit_code"] == 3, result
    assert result["return_value"] is None


SELF_WRITTEN_OUTCOMES = {
    "nan": b'{"ok": true, "return_value": NaN}',
    "infinity": b'{"ok": true, "return_value": [Infinity]}',
    "surrogate": b'{"ok": true, "return_value": "\\ud800"}',
    "surrogate_key": b'{"ok": true, "return_value": {"\\udc00": 1}}',
    "deep": b'{"ok": true, "return_value": ' + b"[" * 300 + b"]" * 300 + b"}",
    "very_deep": b'{"ok": true, "return_value": ' + b"[" * 200_000 + b"]" * 200_000 + b"}",
    "error_surrogate": b'{"ok": false, "error_type": "X", "error": "\\ud800 boom"}',
}


@pytest.mark.parametrize("name", list(SELF_WRITTEN_OUTCOMES))
def test_outcomes_written_by_user_code_still_make_valid_json(daemon: Daemon, name: str) -> None:
    # User code finds its own result fd and writes an outcome the bootstraps would never
    # produce, then exits 0 before the bootstrap writes the real one.
    code = (
        "import os\n"
        f"DOC = {SELF_WRITTEN_OUTCOMES[name]!r}\n"
        "def handler(event):\n"
        "    for fd in range(3, 1024):\n"
        "        try:\n"
        "            os.write(fd, DOC)\n"
        "        except OSError:\n"
        "            pass\n"
        "    os._exit(0)\n"
    )
    result = daemon.attack(code)  # strict JSON, 200: never a 500 or NaN in the answer
    assert result["return_value"] is None, result["return_value"]
    if name.startswith(("surrogate", "deep", "error")):
        assert result["status"] == "failed", result


BIG_RETURN = {
    "python": "def handler(event):\n    return 'x' * (100 * 1024 * 1024)\n",
    "javascript": "exports.handler = async () => 'x'.repeat(100 * 1024 * 1024);\n",
}


@pytest.mark.parametrize("language", ["python", "javascript"])
def test_a_100_mib_return_value(daemon: Daemon, language: str) -> None:
    result = daemon.attack(BIG_RETURN[language], language, timeout=10)
    assert result["status"] == "failed", result["status"]
    assert result["return_value"] is None
    assert len(result["stderr"]) < 64 * 1024


def test_a_100_mib_write_straight_into_the_result_channel(daemon: Daemon) -> None:
    code = r"""
import os
def handler(event):
    chunk = b"[" * (1 << 20)
    for fd in range(3, 1024):
        try:
            for _ in range(100):
                os.write(fd, chunk)
            break
        except OSError:
            continue
    return "never seen"
"""
    result = daemon.attack(code, timeout=10)
    assert result["status"] == "failed" and result["return_value"] is None, result["status"]


NOT_JSON = {
    "python": [
        ("nan", "float('nan')"),
        ("inf", "float('inf')"),
        ("nested_nan", "{'a': [1, float('-inf')]}"),
        ("circular", "(lambda d: (d.__setitem__('self', d), d)[1])({})"),
        ("object", "object()"),
        ("bytes", "b'\\xff'"),
        ("set", "{1, 2}"),
        ("surrogate", "'\\ud800'"),
        ("deep_1000", "(lambda: [v := [], [v := [v] for _ in range(1000)]][0] or v)()"),
    ],
    "javascript": [
        ("nan", "NaN"),
        ("inf", "Infinity"),
        ("nested_nan", "({ a: [1, -Infinity] })"),
        ("circular", "(() => { const o = {}; o.self = o; return o; })()"),
        ("bigint", "10n"),
        ("surrogate", "'\\ud800'"),
        ("deep_5000", "(() => { let v = []; for (let i = 0; i < 5000; i++) v = [v]; return v; })()"),
    ],
}


@pytest.mark.parametrize(
    ("language", "name", "expr"),
    [(lang, name, expr) for lang, cases in NOT_JSON.items() for name, expr in cases],
    ids=[f"{lang}-{name}" for lang, cases in NOT_JSON.items() for name, _ in cases],
)
def test_return_values_that_are_not_json(daemon: Daemon, language: str, name: str, expr: str) -> None:
    code = (
        f"def handler(event):\n    return {expr}\n"
        if language == "python"
        else f"exports.handler = async () => {expr};\n"
    )
    result = daemon.attack(code, language)  # the response itself is parsed as strict JSON
    # (A lone surrogate is a legal JSON escape, but no UTF-8 answer can carry it.)
    assert result["status"] == "failed", (name, result["status"], result["return_value"])
    assert result["return_value"] is None
    assert result["error"], result


@pytest.mark.parametrize("depth", [100, 300, 900, 5000])
def test_deeply_nested_return_values(daemon: Daemon, depth: int) -> None:
    # JavaScript serializes deep structures that Python's JSON tools and the response
    # serializer cannot take back: the daemon must answer, not 500.
    code = (
        f"exports.handler = async () => {{ let v = []; for (let i = 0; i < {depth}; i++) v = [v]; "
        "return v; };\n"
    )
    result = daemon.attack(code, "javascript")
    if depth <= 100:
        assert result["status"] == "success"
    else:
        assert result["status"] == "failed" and result["return_value"] is None, result["status"]
