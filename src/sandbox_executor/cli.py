"""`sandbox-executor` command line: run, check, serve."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path

from .checks import run_checks
from .config import Settings


def _settings(**overrides: object) -> Settings:
    return Settings(**{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]


def _logs_to_stderr() -> None:
    """Operator commands print their answer on stdout: keep log lines off it."""
    import structlog

    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))


def cmd_run(args: argparse.Namespace) -> int:
    from .engine import Engine
    from .models import ExecuteRequest

    _logs_to_stderr()
    code = Path(args.file).read_text(encoding="utf-8") if args.file != "-" else sys.stdin.read()
    event = json.loads(args.event) if args.event else None
    workspace = os.path.abspath(args.workspace) if args.workspace else None
    temp: tempfile.TemporaryDirectory[str] | None = None
    base = Settings()
    if workspace is None:
        temp = tempfile.TemporaryDirectory(prefix="sandbox-ws-")
        workspace = temp.name
        if base.runs_as_root:
            uid, gid = base.sandbox_ids()
            os.chown(workspace, uid, gid)
    settings = base.model_copy(update={"workspace_path": str(workspace)})
    settings.__dict__.pop("workspace_dir", None)
    request = ExecuteRequest(
        execution_id=args.execution_id,
        code=code,
        language=args.language,
        timeout=args.timeout if args.timeout is not None else settings.default_timeout_seconds,
        event=event,
        stdin=args.stdin,
        env_vars=dict(kv.split("=", 1) for kv in args.env or []),
    )
    try:
        result = asyncio.run(Engine(settings).execute_once(request))
    finally:
        if temp is not None:
            temp.cleanup()
    sys.stdout.write(result.model_dump_json(indent=2) + "\n")
    return 0 if result.status == "success" else 1


def cmd_check(args: argparse.Namespace) -> int:
    _logs_to_stderr()
    settings = Settings()
    failed = 0
    for result in run_checks(settings, include_results_dir=False):
        mark = "ok  " if result.ok else "FAIL"
        print(f"[{mark}] {result.name}: {result.detail}")
        if not result.ok:
            failed += 1
            print(f"       remedy: {result.remedy}")
    return 1 if failed else 0


def cmd_serve(args: argparse.Namespace) -> int:
    # structlog and httpx import rich and pygments for terminal output whenever they are
    # installed (a development venv has them for schemathesis); the daemon only writes JSON
    # logs, and those two are 4 MiB of its idle RSS (issue 7 budget: 60 MiB).
    for name in ("rich", "pygments"):
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]
    from .service_main import serve

    return serve()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sandbox-executor", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one file in a sandbox and print the result as JSON")
    run.add_argument("file", help="source file, or - for stdin")
    run.add_argument("--language", "-l", choices=["python", "javascript", "shell"], required=True)
    run.add_argument("--event", help="event JSON object for the handler")
    run.add_argument("--stdin", help="text fed to the process's stdin")
    run.add_argument("--timeout", type=int, help="seconds (1..3600)")
    run.add_argument("--workspace", help="workspace directory (default: a fresh temporary one)")
    run.add_argument("--env", action="append", metavar="NAME=VALUE", help="environment variable")
    run.add_argument("--execution-id", default="cli-run")
    run.set_defaults(func=cmd_run)
    check = sub.add_parser("check", help="verify that sandboxes can run on this host")
    check.set_defaults(func=cmd_check)
    serve = sub.add_parser("serve", help="start the HTTP service")
    serve.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, OSError) as exc:
        print(f"sandbox-executor: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
