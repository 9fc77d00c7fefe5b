"""Language semantics through the real engine: handlers, return values, errors, inputs."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Awaitable, Callable

from sandbox_executor.models import ExecutionResult, Status, TerminationReason

RunCode = Callable[..., Awaitable[ExecutionResult]]

ONE_MIB = 1024 * 1024


def _code(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


# ----------------------------------------------------------------------------- python
async def test_python_handler_return_value(run_code: RunCode) -> None:
    code = _code(
        """
        def handler(event):
            print("hello from user code")
            return {"got": event, "list": [1, 2.5, None, True], "text": "é"}
        """
    )
    result = await run_code(code, event={"a": 1})
    assert result.status == Status.SUCCESS, result.stderr
    assert result.exit_code == 0 and result.termination_reason == TerminationReason.EXITED
    assert result.return_value == {"got": {"a": 1}, "list": [1, 2.5, None, True], "text": "é"}
    assert result.stdout == "hello from user code\n"
    assert result.stderr == ""


async def test_python_handler_with_context(run_code: RunCode) -> None:
    code = _code(
        """
        def handler(event, context):
            remaining = context.get_remaining_time_in_millis()
            return {"id": context.execution_id, "remaining_ok": 0 < remaining <= 7000}
        """
    )
    result = await run_code(code, execution_id="exec_ctx_1", timeout=7)
    assert result.status == Status.SUCCESS, result.stderr
    assert result.return_value == {"id": "exec_ctx_1", "remaining_ok": True}


async def test_python_async_handler(run_code: RunCode) -> None:
    code = "import asyncio\nasync def handler(event):\n    await asyncio.sleep(0)\n    return 7\n"
    result = await run_code(code)
    assert result.status == Status.SUCCESS and result.return_value == 7


async def test_python_multiprocessing_pool_with_handler_functions(run_code: RunCode) -> None:
    # Pickle looks functions up in __main__: user code must live in a real __main__ module.
    code = _code(
        """
        import multiprocessing

        def square(x):
            return x * x

        def handler(event):
            with multiprocessing.Pool(2) as pool:
                return pool.map(square, range(5))
        """
    )
    result = await run_code(code)
    assert result.status == Status.SUCCESS, result.stderr
    assert result.return_value == [0, 1, 4, 9, 16]


async def test_python_without_handler_fails_clearly(run_code: RunCode) -> None:
    result = await run_code("x = 1\nprint('ran')\n")
    assert result.status == Status.FAILED
    assert result.exit_code == 1
    assert "No handler found" in result.stderr and "def handler(event)" in result.stderr
    assert result.stdout == "ran\n"
    assert result.return_value is None


async def test_python_exception_gives_traceback(run_code: RunCode) -> None:
    code = _code(
        """
        def helper(x):
            raise ValueError(f"bad value {x}")

        def handler(event):
            print("before")
            return helper(event["n"])
        """
    )
    result = await run_code(code, event={"n": 42})
    assert result.status == Status.FAILED
    assert result.exit_code == 1
    assert result.stdout == "before\n"
    err = result.stderr
    assert err.startswith("Traceback (most recent call last):")
    assert 'File "handler.py", line 6, in handler' in err
    assert 'File "handler.py", line 2, in helper' in err
    assert '    raise ValueError(f"bad value {x}")' in err  # source lines are shown
    assert err.rstrip().endswith("ValueError: bad value 42")
    assert "<string>" not in err  # the bootstrap's own frames are hidden
    assert result.error and "ValueError: bad value 42" in result.error


async def test_python_syntax_error(run_code: RunCode) -> None:
    result = await run_code("def handler(event):\n    return (\n")
    assert result.status == Status.FAILED and result.exit_code == 1
    assert "SyntaxError" in result.stderr and "handler.py" in result.stderr


async def test_python_non_serializable_return(run_code: RunCode) -> None:
    result = await run_code("def handler(event):\n    return {'s': {1, 2}}\n")
    assert result.status == Status.FAILED and result.exit_code == 1
    assert "not JSON-serializable" in result.stderr
    assert "set" in result.stderr
    assert result.return_value is None


async def test_python_nan_return(run_code: RunCode) -> None:
    result = await run_code("def handler(event):\n    return [1.0, float('nan')]\n")
    assert result.status == Status.FAILED
    assert "not JSON-serializable" in result.stderr
    assert result.return_value is None
    json.dumps(result.callback_body(), allow_nan=False)


async def test_python_sys_exit(run_code: RunCode) -> None:
    result = await run_code("import sys\ndef handler(event):\n    sys.exit(3)\n")
    assert result.status == Status.FAILED and result.exit_code == 3


async def test_forged_stdout_markers_do_not_change_the_return_value(run_code: RunCode) -> None:
    code = _code(
        """
        import os, sys
        FAKE = '{"ok": true, "return_value": "forged"}'
        def handler(event):
            print(FAKE)
            print("R" + FAKE)
            print("__RESULT__" + FAKE + "__END__")
            sys.stderr.write(FAKE + "\\n")
            for fd in (1, 2, 3, 4):
                try:
                    os.write(fd, ("R" + FAKE).encode())
                except OSError:
                    pass
            return "genuine"
        """
    )
    result = await run_code(code)
    assert result.status == Status.SUCCESS, result.stderr
    assert result.return_value == "genuine"
    assert result.stdout.count("forged") >= 3  # printed output is left untouched


async def test_return_value_size_is_capped(run_code: RunCode, make_settings) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(max_return_value_bytes=4096)
    result = await run_code("def handler(event):\n    return 'x' * 10000\n", settings=settings)
    assert result.status == Status.FAILED
    assert result.return_value is None
    assert "the limit is 4096 bytes" in result.stderr
    ok = await run_code("def handler(event):\n    return 'x' * 4000\n", settings=settings)
    assert ok.status == Status.SUCCESS and ok.return_value == "x" * 4000


async def test_one_mib_of_code_and_one_mib_event(run_code: RunCode) -> None:
    head = "def handler(event):\n    return [len(event['blob']), len(PAD)]\n"
    pad_len = ONE_MIB - len(head) - len("PAD = ''\n")
    code = head + "PAD = '" + "p" * pad_len + "'\n"
    assert len(code.encode()) == ONE_MIB
    event = {"blob": "e" * ONE_MIB}
    result = await run_code(code, event=event)
    assert result.status == Status.SUCCESS, result.stderr[-2000:]
    assert result.return_value == [ONE_MIB, pad_len]


async def test_stdin_is_fed(run_code: RunCode) -> None:
    code = "import sys\ndef handler(event):\n    return [sys.stdin.read(), event]\n"
    result = await run_code(code, stdin="line one\nline two\n", event={"e": 1})
    assert result.return_value == ["line one\nline two\n", {"e": 1}]


async def test_stdin_json_is_the_event_when_no_event(run_code: RunCode) -> None:
    code = "import sys\ndef handler(event):\n    return [event, sys.stdin.read()]\n"
    result = await run_code(code, stdin='{"k": 5}')
    assert result.return_value == [{"k": 5}, '{"k": 5}']


async def test_no_stdin_reads_eof(run_code: RunCode) -> None:
    result = await run_code("import sys\ndef handler(event):\n    return sys.stdin.read()\n")
    assert result.status == Status.SUCCESS and result.return_value == ""


async def test_env_vars_reach_user_code(run_code: RunCode) -> None:
    code = _code(
        """
        import os, subprocess
        def handler(event):
            child = subprocess.run(["sh", "-c", "echo $GREETING"], capture_output=True, text=True)
            return [os.environ["GREETING"], child.stdout]
        """
    )
    result = await run_code(code, env_vars={"GREETING": "hi there"})
    assert result.return_value == ["hi there", "hi there\n"]


# ------------------------------------------------------------------------- javascript
async def test_javascript_function_declaration(run_code: RunCode) -> None:
    code = "function handler(event) {\n  console.log('js says hi');\n  return {sum: event.a + event.b};\n}\n"
    result = await run_code(code, "javascript", event={"a": 2, "b": 3})
    assert result.status == Status.SUCCESS, result.stderr
    assert result.return_value == {"sum": 5}
    assert result.stdout == "js says hi\n"


async def test_javascript_module_exports_async(run_code: RunCode) -> None:
    code = _code(
        """
        module.exports.handler = async (event, context) => {
          await new Promise((resolve) => setTimeout(resolve, 20));
          return {id: context.executionId, n: event.n * 2};
        };
        """
    )
    result = await run_code(code, "javascript", event={"n": 21}, execution_id="exec_js_1")
    assert result.status == Status.SUCCESS, result.stderr
    assert result.return_value == {"id": "exec_js_1", "n": 42}


async def test_javascript_exports_promise_and_function_export(run_code: RunCode) -> None:
    code = "exports.handler = (e) => new Promise((r) => setTimeout(() => r([e.x, 'done']), 5));\n"
    result = await run_code(code, "javascript", event={"x": 1})
    assert result.return_value == [1, "done"]
    code = "module.exports = function (event) { return 'whole module'; };\n"
    result = await run_code(code, "javascript")
    assert result.status == Status.SUCCESS and result.return_value == "whole module"


async def test_javascript_plain_script(run_code: RunCode) -> None:
    code = "console.log('plain', 1 + 1);\nsetTimeout(() => console.log('later'), 10);\n"
    result = await run_code(code, "javascript")
    assert result.status == Status.SUCCESS, result.stderr
    assert result.stdout == "plain 2\nlater\n"
    assert result.return_value is None


async def test_javascript_exception(run_code: RunCode) -> None:
    code = "function handler(event) {\n  throw new TypeError('nope ' + event.v);\n}\n"
    result = await run_code(code, "javascript", event={"v": 9})
    assert result.status == Status.FAILED and result.exit_code == 1
    assert "TypeError: nope 9" in result.stderr
    assert "handler.js:2" in result.stderr


async def test_javascript_rejected_promise(run_code: RunCode) -> None:
    code = "exports.handler = async () => { throw new Error('async boom'); };\n"
    result = await run_code(code, "javascript")
    assert result.status == Status.FAILED and result.exit_code == 1
    assert "Error: async boom" in result.stderr


async def test_javascript_plain_script_exception(run_code: RunCode) -> None:
    result = await run_code("console.log('a');\nnull.x;\n", "javascript")
    assert result.status == Status.FAILED and result.exit_code == 1
    assert result.stdout == "a\n" and "TypeError" in result.stderr


async def test_javascript_non_serializable_and_nan(run_code: RunCode) -> None:
    nan = await run_code("function handler() { return {v: NaN}; }", "javascript")
    assert nan.status == Status.FAILED and "not JSON-serializable" in nan.stderr
    cyc = await run_code("function handler() { const a = {}; a.a = a; return a; }", "javascript")
    assert cyc.status == Status.FAILED and "not JSON-serializable" in cyc.stderr
    big = await run_code("function handler() { return 10n; }", "javascript")
    assert big.status == Status.FAILED and "not JSON-serializable" in big.stderr


async def test_javascript_handler_that_never_settles(run_code: RunCode) -> None:
    code = "exports.handler = () => new Promise(() => {});\n"
    result = await run_code(code, "javascript")
    assert result.status == Status.FAILED
    assert "never settled" in result.stderr


async def test_javascript_explicit_exit(run_code: RunCode) -> None:
    ok = await run_code("exports.handler = () => { console.log('bye'); process.exit(0); };", "javascript")
    assert ok.status == Status.SUCCESS and ok.stdout == "bye\n" and ok.return_value is None
    bad = await run_code("exports.handler = () => { process.exit(4); };", "javascript")
    assert bad.status == Status.FAILED and bad.exit_code == 4


async def test_javascript_forged_stdout_and_size_cap(run_code: RunCode, make_settings) -> None:  # type: ignore[no-untyped-def]
    code = 'function handler() { console.log(\'{"ok":true,"return_value":"forged"}\'); return \'real\'; }'
    result = await run_code(code, "javascript")
    assert result.return_value == "real"
    settings = make_settings(max_return_value_bytes=2048)
    result = await run_code(
        "function handler() { return 'y'.repeat(5000); }", "javascript", settings=settings
    )
    assert result.status == Status.FAILED and "the limit is 2048 bytes" in result.stderr


async def test_javascript_stdin_and_env(run_code: RunCode) -> None:
    code = "function handler(e) { return [require('fs').readFileSync(0, 'utf8'), process.env.TOKENISH]; }"
    result = await run_code(code, "javascript", stdin="from stdin", env_vars={"TOKENISH": "v"})
    assert result.return_value == ["from stdin", "v"]


async def test_javascript_one_mib_code(run_code: RunCode) -> None:
    head = "function handler(e) { return PAD.length; }\nconst PAD = '"
    pad = ONE_MIB - len(head) - 3
    code = head + "q" * pad + "';\n"
    assert len(code.encode()) == ONE_MIB
    result = await run_code(code, "javascript")
    assert result.status == Status.SUCCESS, result.stderr[-1000:]
    assert result.return_value == pad


# ------------------------------------------------------------------------------ shell
async def test_shell_reads_the_event_at_the_documented_path(run_code: RunCode) -> None:
    code = 'echo "file=$SANDBOX_EVENT_FILE"\ncat /tmp/event.json\necho\ncat "$SANDBOX_EVENT_FILE" | wc -c\n'
    event = {"msg": 'it\'s "quoted" $(id) `x`', "n": 1}
    result = await run_code(code, "shell", event=event)
    assert result.status == Status.SUCCESS, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "file=/tmp/event.json"
    assert json.loads(lines[1]) == event
    assert result.return_value is None


async def test_shell_one_mib_event_and_stdin(run_code: RunCode) -> None:
    code = 'wc -c < "$SANDBOX_EVENT_FILE"\nread -r line\necho "stdin=$line"\n'
    result = await run_code(code, "shell", event={"b": "z" * ONE_MIB}, stdin="hello\n")
    assert result.status == Status.SUCCESS, result.stderr
    size, stdin_line = result.stdout.splitlines()
    assert int(size) == ONE_MIB + len('{"b": ""}')
    assert stdin_line == "stdin=hello"


async def test_shell_exit_status_and_line_numbers(run_code: RunCode) -> None:
    code = "echo out\necho err >&2\nundefined_command_xyz\necho line=$LINENO\nexit 3\n"
    result = await run_code(code, "shell")
    assert result.status == Status.FAILED and result.exit_code == 3
    assert result.termination_reason == TerminationReason.EXITED
    assert result.stdout == "out\nline=4\n"
    assert "err\n" in result.stderr
    assert "line 3: undefined_command_xyz: command not found" in result.stderr


async def test_shell_first_line_may_be_anything(run_code: RunCode) -> None:
    for first in ("#!/bin/bash", "cat <<EOF", "{ echo grouped; }", "( echo sub )", "", "if true; then"):
        rest = {"cat <<EOF": "heredoc\nEOF\n", "if true; then": "echo in-if\nfi\n"}.get(first, "")
        result = await run_code(first + "\n" + rest + "echo end\n", "shell")
        assert result.status == Status.SUCCESS, (first, result.stderr)
        assert result.stdout.endswith("end\n"), (first, result.stdout)


async def test_shell_env_vars(run_code: RunCode) -> None:
    result = await run_code('echo "$A|$B"\n', "shell", env_vars={"A": "x y'z", "B": "$HOME"})
    assert result.stdout == "x y'z|$HOME\n"


async def test_shell_sees_no_launch_pipes(run_code: RunCode) -> None:
    result = await run_code("ls /proc/self/fd | sort -n | tr '\\n' ' '\n", "shell")
    fds = [int(x) for x in result.stdout.split()]
    # stdin, stdout, stderr, plus the fd ls itself opened: nothing else inherited.
    assert fds[:3] == [0, 1, 2] and len(fds) <= 4, result.stdout
