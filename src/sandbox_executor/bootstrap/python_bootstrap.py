# Runs inside the sandbox: `python3 -I -S -u -B /dev/fd/N INPUT_FD RESULT_FD MARKER [PIDS]`
# (N: a sealed memfd lent by the daemon, see bootstraps.py; usually this file compiled).
# Kept import-light: every millisecond here is start-up latency. Protocol: MARKER on the
# result fd as soon as the interpreter runs; then one JSON message on the input fd (code,
# event, env, limits); the outcome as one JSON document on the result fd, which is moved
# out of the way and made close-on-exec so child processes cannot write to it. stdout is
# never parsed.
import os
import sys

MYPY = False
if MYPY:  # for the type checker only: importing typing costs start-up time
    from typing import Any, NoReturn


def _sandbox_main() -> None:
    if sys.argv[0].startswith("/dev/fd/"):
        # The program's own descriptor: user code never sees it (the memfd is sealed anyway).
        os.close(int(sys.argv[0][len("/dev/fd/") :]))
    input_fd, output_fd, marker = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    if len(sys.argv) > 4:
        import resource

        # This sandbox's own process cap, counted in its user namespace (runtimes.py).
        pids = int(sys.argv[4])
        resource.setrlimit(resource.RLIMIT_NPROC, (pids, pids))
    # What every run needs, done before the wait: a pre-started (warm) sandbox pays for it
    # while idle, not after the request arrived. Only C modules: `json` and `linecache`
    # would pull in re, enum, functools and tokenize (3-8 ms of a cold start). The first
    # compile() of a process sets up the compiler (~0.7 ms); gc.freeze() moves everything
    # that exists now out of the collector's sight, so the collection at exit only walks
    # the user's objects.
    import _json  # noqa: F401 - loaded now (a dlopen, ~0.3 ms), used after the wait
    import fcntl
    import gc
    import time  # noqa: F401 - for _Context

    compile("pass", "<warm-up>", "exec")
    gc.freeze()
    os.write(output_fd, marker.encode())  # the sandbox is up
    chunks = []
    while True:
        chunk = os.read(input_fd, 1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(input_fd)
    msg = _json_loads(b"".join(chunks))

    # Out of the way of the low descriptors user code plays with; below a small
    # RLIMIT_NOFILE (EINVAL at 200), as high as it allows.
    try:
        result_fd = fcntl.fcntl(output_fd, fcntl.F_DUPFD_CLOEXEC, 200)
    except OSError:
        result_fd = fcntl.fcntl(output_fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(output_fd)
    for path in msg.get("sys_path", ()):
        if path not in sys.path:
            sys.path.append(path)
    os.environ.update(msg.get("env", {}))
    max_bytes = int(msg.get("max_return_bytes", 10485760))
    code = msg["code"]
    filename = msg.get("filename", "handler.py")

    def report(doc: "dict[str, Any]") -> None:
        data = _json_dumps(doc).encode("utf-8", "surrogatepass")
        view = memoryview(data)
        while view:
            view = view[os.write(result_fd, view) :]

    def fail(kind: str, message: str, exit_code: int = 1) -> "NoReturn":
        sys.stderr.write(message if message.endswith("\n") else message + "\n")
        sys.stderr.flush()
        report({"ok": False, "error_type": kind, "error": message.strip()[-4000:]})
        sys.stdout.flush()
        os._exit(exit_code)

    def print_user_traceback(exc: BaseException) -> str:
        import traceback

        tb = exc.__traceback__
        # Drop the bootstrap's own frames (its file name) so the trace starts in user code.
        while tb is not None and tb.tb_frame.f_code.co_filename == _OWN_FILE:
            tb = tb.tb_next
        text = "".join(traceback.format_exception(type(exc), exc, tb))
        return text

    _register_source(filename, code)
    # A real module registered as __main__ (not the bootstrap's own): pickle finds
    # the user's functions there, so multiprocessing.Pool works with handler-defined code.
    main_module = type(sys)("__main__")  # types.ModuleType, without importing types (0.5 ms)
    main_module.__file__ = filename
    main_module.__builtins__ = __builtins__  # type: ignore[attr-defined]
    sys.modules["__main__"] = main_module
    namespace: dict[str, Any] = main_module.__dict__
    sys.argv = [filename]
    try:
        compiled = compile(code, filename, "exec")
        exec(compiled, namespace)  # noqa: S102 - running the user's code is the point
        handler = namespace.get("handler")
        if handler is None:
            fail(
                "NoHandler",
                "No handler found: define `def handler(event):` (or `handler(event, context)`) "
                "at the top level of the code.",
            )
        if not callable(handler):
            fail("NoHandler", "`handler` is defined but is not callable.")
        event = msg.get("event") or {}
        context = _Context(msg.get("context", {}))
        if _wants_context(handler):
            value = handler(event, context)
        else:
            value = handler(event)
        if hasattr(value, "__await__"):
            import asyncio

            async def _await(awaitable: "Any") -> "Any":
                return await awaitable

            value = asyncio.run(_await(value))
    except MemoryError:
        sys.stdout.flush()
        fail("MemoryError", "MemoryError: the execution exceeded its memory limit.")
    except SystemExit:
        raise
    except BaseException as exc:  # report anything the user code raised
        sys.stdout.flush()
        fail(type(exc).__name__, print_user_traceback(exc))
    sys.stdout.flush()
    try:
        payload = _json_dumps({"ok": True, "return_value": value}).encode("utf-8", "surrogatepass")
    except (TypeError, ValueError, RecursionError, OverflowError) as exc:
        fail(
            "NonSerializableReturn",
            f"The handler's return value is not JSON-serializable: {type(exc).__name__}: {str(exc)[:500]}",
        )
    except MemoryError:
        fail("MemoryError", "MemoryError while serializing the return value.")
    if len(payload) > max_bytes:
        fail(
            "ReturnValueTooLarge",
            f"The handler's return value is {len(payload)} bytes serialized; the limit is {max_bytes} bytes.",
        )
    view = memoryview(payload)
    while view:
        view = view[os.write(result_fd, view) :]
    os.close(result_fd)
    _exit_after_success(namespace)


def _exit_after_success(namespace: "dict[str, Any]") -> "NoReturn":
    # Do what a normal interpreter exit does that user code can observe (join non-daemon
    # threads, run atexit handlers, finalize the user's globals so unclosed files are
    # flushed, flush stdio), then _exit: the interpreter's own teardown of every module
    # costs 2-4 ms, the largest part of a short run's wall time.
    threading = sys.modules.get("threading")
    if threading is not None:
        threading._shutdown()
    import atexit

    atexit._run_exitfuncs()
    namespace.clear()
    import gc

    gc.collect()  # cheap: the bootstrap's objects were frozen before the user's code ran
    status = 0
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # as the interpreter does: exit status 120
            status = 120
    os._exit(status)


def _json_loads(data: bytes) -> "Any":
    """json.loads() of the launch message with the C scanner alone (no json package)."""
    import _json

    class _Decoder:  # the attributes _json.make_scanner reads from a json.JSONDecoder
        strict = True
        object_hook = None
        object_pairs_hook = None
        parse_float = float
        parse_int = int
        parse_constant = {
            "NaN": float("nan"),
            "Infinity": float("inf"),
            "-Infinity": float("-inf"),
        }.__getitem__

    text = data.decode("utf-8", "surrogatepass")
    scan = _json.make_scanner(_Decoder())  # type: ignore[arg-type]
    return scan(text, len(text) - len(text.lstrip()))[0]


def _json_dumps(value: "Any") -> str:
    """json.dumps(value, ensure_ascii=False, allow_nan=False), with the C encoder alone."""
    import _json

    def default(obj: "Any") -> "Any":
        raise TypeError(f"Object of type {obj.__class__.__name__} is not JSON serializable")

    encode = _json.make_encoder({}, default, _json.encode_basestring, None, ": ", ", ", False, False, False)
    return "".join(encode(value, 0))


def _register_source(filename: str, code: str) -> None:
    """Make the user's source visible to linecache (tracebacks, inspect) without importing it
    now: linecache imports tokenize and re, milliseconds most runs never need. The entry is
    added the moment anything imports linecache (and has no mtime, so it is never checked
    against a file of that name in the workspace)."""
    entry = (len(code), None, code.splitlines(True), filename)
    module = sys.modules.get("linecache")
    if module is not None:
        module.cache[filename] = entry
        return

    class _Loader:
        def __init__(self, inner: "Any") -> None:
            self.inner = inner

        def __getattr__(self, name: str) -> "Any":
            return getattr(self.inner, name)

        def create_module(self, spec: "Any") -> "Any":
            return self.inner.create_module(spec)

        def exec_module(self, module: "Any") -> None:
            self.inner.exec_module(module)
            module.cache[filename] = entry

    class _Finder:
        @staticmethod
        def find_spec(name: str, path: "Any" = None, target: "Any" = None) -> "Any":
            if name != "linecache":
                return None
            sys.meta_path.remove(_Finder)
            for finder in sys.meta_path:
                spec = finder.find_spec(name, path, target)
                if spec is not None and spec.loader is not None:
                    spec.loader = _Loader(spec.loader)  # type: ignore[assignment]
                    return spec
            return None

    sys.meta_path.insert(0, _Finder)


class _Context:
    """Lambda-style context: execution id and remaining time."""

    def __init__(self, data: "dict[str, Any]") -> None:
        import time

        self.execution_id = self.aws_request_id = data.get("execution_id", "")
        self.function_name = "handler"
        self._deadline = time.monotonic() + float(data.get("timeout", 0))

    def get_remaining_time_in_millis(self) -> int:
        import time

        return max(0, int((self._deadline - time.monotonic()) * 1000))


def _wants_context(fn: "Any") -> bool:
    code = getattr(fn, "__code__", None)
    if code is None:
        call = getattr(type(fn), "__call__", None)  # noqa: B004 - the method, not callable()
        code = getattr(call, "__code__", None)
        if code is None:
            return False
        offset = 1
    else:
        offset = 1 if hasattr(fn, "__self__") else 0
    if code.co_flags & 0x04:  # *args
        return True
    return bool(code.co_argcount - offset >= 2)


_OWN_FILE = _sandbox_main.__code__.co_filename
_sandbox_main()
