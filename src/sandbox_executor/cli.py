"""`sandbox-executor` command line: run, check, serve, mcp."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from pydantic import ValidationError

from .checks import check_run_guards, run_checks
from .config import Settings
from .errors import InvalidRequest, SandboxStartError

if TYPE_CHECKING:
    from .engine import Engine
    from .models import ExecuteRequest, ExecutionResult


def _settings(**overrides: object) -> Settings:
    return Settings(**{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]


def _logs_to_stderr() -> None:
    """Operator commands print their answer on stdout: keep log lines off it."""
    import structlog

    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))


def read_event(spec: str | None, *, code_from_stdin: bool, limit: int, stdin: BinaryIO) -> Any:
    """The parsed ``--event``: inline JSON, ``@FILE``, or ``-`` / ``@-`` for standard input
    (curl's convention; one argument is capped at 128 KiB by the kernel, events are not).

    Raises InvalidRequest with a message for the operator; what the JSON holds is checked
    by ExecuteRequest, as in the API.
    """
    if not spec:
        return None
    if spec in ("-", "@-"):
        if code_from_stdin:
            raise InvalidRequest(
                "--event - reads the event from standard input, which already carries the code; "
                "pass the code as a file, or the event as @FILE"
            )
        source, raw = "standard input", stdin.read(limit + 1)
    elif spec.startswith("@"):
        source = spec[1:]
        try:
            with open(source, "rb") as fh:
                raw = fh.read(limit + 1)
        except OSError as exc:
            raise InvalidRequest(f"cannot read the event file {source}: {exc.strerror or exc}") from None
    else:
        source, raw = "--event", spec.encode("utf-8", "surrogateescape")
    if len(raw) > limit:
        raise InvalidRequest(f"the event from {source} exceeds {limit} bytes, the API's request limit")
    try:
        return json.loads(raw)
    except RecursionError:
        raise InvalidRequest(f"the event from {source} is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise InvalidRequest(f"the event from {source} is not valid JSON: {exc}") from None


def _invalid(exc: ValidationError) -> InvalidRequest:
    # pydantic's own text repeats the input (maybe a megabyte of event): location and reason only.
    reasons = [f"{'.'.join(str(p) for p in e['loc']) or 'request'}: {e['msg']}" for e in exc.errors()]
    return InvalidRequest("invalid request: " + "; ".join(reasons[:5]))


def cmd_run(args: argparse.Namespace) -> int:
    from .engine import Engine
    from .models import ExecuteRequest

    _logs_to_stderr()
    base = Settings()
    code_from_stdin = args.file == "-"
    event = read_event(
        args.event, code_from_stdin=code_from_stdin, limit=base.max_request_bytes, stdin=sys.stdin.buffer
    )
    code = sys.stdin.read() if code_from_stdin else Path(args.file).read_text(encoding="utf-8")
    try:
        request = ExecuteRequest(
            execution_id=args.execution_id,
            code=code,
            language=args.language,
            timeout=args.timeout if args.timeout is not None else base.default_timeout_seconds,
            event=event,
            stdin=args.stdin,
            env_vars=dict(kv.split("=", 1) for kv in args.env or []),
        )
    except ValidationError as exc:
        raise _invalid(exc) from None
    workspace = os.path.abspath(args.workspace) if args.workspace else None
    temp: tempfile.TemporaryDirectory[str] | None = None
    if workspace is None:
        temp = tempfile.TemporaryDirectory(prefix="sandbox-ws-")
        workspace = temp.name
        if base.runs_as_root:
            uid, gid = base.sandbox_ids()
            os.chown(workspace, uid, gid)
    settings = base.model_copy(update={"workspace_path": str(workspace)})
    settings.__dict__.pop("workspace_dir", None)
    try:
        engine = Engine(settings)
        if args.stream:
            result = asyncio.run(_run_streaming(engine, request))
        else:
            result = asyncio.run(engine.execute_once(request))
    finally:
        if temp is not None:
            temp.cleanup()
    sys.stdout.write(result.model_dump_json(indent=2) + "\n")
    return 0 if result.status == "success" else 1


async def _run_streaming(engine: Engine, request: ExecuteRequest) -> ExecutionResult:
    """Run ``request``, copying its stdout/stderr to ours as they come (``run --stream``)."""
    from .streaming import EventLog, relay

    output = EventLog(request.execution_id, engine.settings.max_output_bytes)
    copier = asyncio.create_task(relay(output, sys.stdout.buffer, sys.stderr.buffer))
    try:
        result = await engine.execute_once(request, output)
    except BaseException:
        copier.cancel()
        raise
    output.finish(result)
    await copier
    if result.stdout and not result.stdout.endswith("\n"):
        sys.stdout.buffer.write(b"\n")  # the result's JSON starts on a line of its own
        sys.stdout.buffer.flush()
    return result


def cmd_check(args: argparse.Namespace) -> int:
    _logs_to_stderr()
    settings = Settings()
    failed = 0
    for result in [*run_checks(settings, include_results_dir=False), *check_run_guards(settings)]:
        mark = "ok  " if result.ok else "FAIL"
        print(f"[{mark}] {result.name}: {result.detail}")
        for note in result.notes:
            print(f"       {note}")
        if not result.ok:
            failed += 1
        if result.remedy:
            print(f"       remedy: {result.remedy}")
    return 1 if failed else 0


def cmd_serve(args: argparse.Namespace) -> int:
    # structlog and httpx import rich and pygments for terminal output whenever they are
    # installed (a development venv has them for schemathesis); the daemon only writes JSON
    # logs, and those two are 4 MiB of its idle RSS (the footprint budget is 60 MiB).
    for name in ("rich", "pygments"):
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]
    from .daemon import serve

    return serve()


def cmd_mcp(args: argparse.Namespace) -> int:
    from .mcp_server import run_stdio

    return run_stdio(args.workspace)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sandbox-executor", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one file in a sandbox and print the result as JSON")
    run.add_argument("file", help="source file, or - for stdin")
    run.add_argument("--language", "-l", choices=["python", "javascript", "shell"], required=True)
    run.add_argument(
        "--event",
        help="event JSON object for the handler: inline, @FILE, or - (@-) for standard input "
        "when the code comes from a file",
    )
    run.add_argument("--stdin", help="text fed to the process's stdin")
    run.add_argument("--timeout", type=int, help="seconds (1..3600)")
    run.add_argument("--workspace", help="workspace directory (default: a fresh temporary one)")
    run.add_argument("--env", action="append", metavar="NAME=VALUE", help="environment variable")
    run.add_argument("--execution-id", default="cli-run")
    run.add_argument(
        "--stream",
        action="store_true",
        help="print the program's stdout and stderr live (to stdout and stderr), then the result",
    )
    run.set_defaults(func=cmd_run)
    check = sub.add_parser("check", help="verify that sandboxes can run on this host")
    check.set_defaults(func=cmd_check)
    serve = sub.add_parser("serve", help="start the HTTP service")
    serve.set_defaults(func=cmd_serve)
    mcp = sub.add_parser(
        "mcp", help="serve the MCP tools over stdio (run_code and workspace files; no daemon needed)"
    )
    mcp.add_argument("--workspace", help="workspace directory (default: WORKSPACE_PATH)")
    mcp.set_defaults(func=cmd_mcp)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except InvalidRequest as exc:
        print(f"sandbox-executor: error: {exc.description}", file=sys.stderr)
        return 2
    except SandboxStartError as exc:  # the isolation level asked for cannot be had here
        print(f"sandbox-executor: error: {exc.description}\n  remedy: {exc.solution}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as exc:
        print(f"sandbox-executor: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
