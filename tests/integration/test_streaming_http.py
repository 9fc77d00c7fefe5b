"""Live output over real HTTP: a real program's pipes through the real BoundedCapture into
an EventLog, served by uvicorn on loopback to real SSE clients (in another thread, so the
client shares nothing with the server's event loop).

The capture is fed as the sandbox will feed it: a BoundedCapture whose data_received also
hands each chunk to the log (``TeeCapture`` below is that one-line hook).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sandbox_executor.capture import BoundedCapture
from sandbox_executor.models import ExecutionResult, Metrics, Status, TerminationReason
from sandbox_executor.sse import EventStreamResponse, event_stream_response, parse_last_event_id, sse_chunks
from sandbox_executor.streaming import FLUSH_BYTES, EventLog, EventLogs, Stream
from tests.support.server import free_port
from tests.support.sse_client import ParsedEvent, SSEParser

FIGURES = Path(os.environ.get("STREAM_FIGURES", "/tmp/streaming-figures.json"))
MIB = 1024 * 1024


class TeeCapture(BoundedCapture):
    def __init__(self, limit: int, log: EventLog, stream: Stream) -> None:
        super().__init__(limit)
        self.log, self.stream = log, stream

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self.log.write(self.stream, data)


async def run_program(code: str, log: EventLog, cap: int) -> ExecutionResult:
    """Run ``code`` with python3, its output captured and streamed; returns its result."""
    loop = asyncio.get_running_loop()
    log.status("running")
    started = time.monotonic()
    captures = []
    fds = []
    for stream in ("stdout", "stderr"):
        r, w = os.pipe2(os.O_CLOEXEC)
        fds.append(w)
        _, protocol = await loop.connect_read_pipe(
            lambda s=stream: TeeCapture(cap, log, s),  # type: ignore[misc]
            os.fdopen(r, "rb", buffering=0),
        )
        captures.append(protocol)
    proc = await asyncio.create_subprocess_exec("/usr/bin/python3", "-c", code, stdout=fds[0], stderr=fds[1])
    for fd in fds:
        os.close(fd)
    code_ = await proc.wait()
    await asyncio.gather(*(c.done for c in captures))
    out, err = captures
    elapsed = time.monotonic() - started
    result = ExecutionResult(
        status=Status.SUCCESS if code_ == 0 else Status.FAILED,
        exit_code=code_,
        stdout=out.data().decode("utf-8", "replace"),
        stderr=err.data().decode("utf-8", "replace"),
        execution_time=elapsed,
        metrics=Metrics(duration_ms=elapsed * 1000),
        termination_reason=TerminationReason.EXITED,
        stdout_truncated=out.truncated,
        stderr_truncated=err.truncated,
    )
    log.finish(result)
    return result


@dataclass
class Daemon:
    url: str
    port: int
    logs: EventLogs
    responses: list[EventStreamResponse] = field(default_factory=list)
    handed: dict[int, int] = field(default_factory=dict)  # response index -> bytes handed to uvicorn


def make_app(daemon: Daemon, keepalive: float, stall_timeout: float) -> Starlette:
    async def events(request: Request) -> Response:
        log = daemon.logs.get(request.path_params["execution_id"])
        if log is None:
            return JSONResponse({"error_code": "Executor.NotFound"}, status_code=404)
        if request.query_params.get("count"):
            # Same response, with a tally of what the generator handed to the server.
            index = len(daemon.responses)
            daemon.handed[index] = 0

            async def counted() -> AsyncIterator[bytes]:
                after = parse_last_event_id(request.headers.get("last-event-id"))
                async for chunk in sse_chunks(log, after, keepalive):
                    daemon.handed[index] += len(chunk)
                    yield chunk

            response = EventStreamResponse(
                counted(), stall_timeout=stall_timeout, execution_id=log.execution_id
            )
        else:
            response = event_stream_response(
                log,
                parse_last_event_id(request.headers.get("last-event-id")),
                keepalive_seconds=keepalive,
                stall_timeout=stall_timeout,
            )
        daemon.responses.append(response)
        return response

    return Starlette(routes=[Route("/executions/{execution_id}/events", events)])


async def start_daemon(
    keepalive: float = 15.0, stall_timeout: float = 60.0
) -> tuple[Daemon, uvicorn.Server, asyncio.Task[None]]:
    port = free_port()
    daemon = Daemon(url=f"http://127.0.0.1:{port}", port=port, logs=EventLogs(max_output_bytes=10 * MIB))
    config = uvicorn.Config(
        make_app(daemon, keepalive, stall_timeout),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="off",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    return daemon, server, task


async def stop(server: uvicorn.Server, task: asyncio.Task[None]) -> None:
    server.should_exit = True
    await asyncio.wait_for(task, 10)


class Reader(threading.Thread):
    """A real SSE client on its own thread: records each event with its arrival time."""

    def __init__(self, url: str, last_event_id: str | None = None, stop_after: int | None = None) -> None:
        super().__init__(daemon=True)
        self.url, self.last_event_id, self.stop_after = url, last_event_id, stop_after
        self.arrivals: list[tuple[float, ParsedEvent]] = []
        self.parser = SSEParser()
        self.error: BaseException | None = None
        self.connected = threading.Event()

    def run(self) -> None:
        headers = {"Last-Event-ID": self.last_event_id} if self.last_event_id else {}
        try:
            with httpx.stream("GET", self.url, headers=headers, timeout=30) as response:
                assert response.status_code == 200, response.read()
                assert response.headers["content-type"].startswith("text/event-stream")
                self.connected.set()
                for chunk in response.iter_raw():
                    now = time.monotonic()
                    for event in self.parser.feed(chunk):
                        self.arrivals.append((now, event))
                    if self.stop_after is not None and len(self.arrivals) >= self.stop_after:
                        return
        except BaseException as exc:
            self.error = exc
            self.connected.set()

    def finish(self, timeout: float = 30) -> list[ParsedEvent]:
        self.join(timeout)
        assert not self.is_alive(), "the stream did not end"
        if self.error is not None:
            raise self.error
        return [event for _, event in self.arrivals]


def record(name: str, value: object) -> None:
    figures = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    figures[name] = value
    FIGURES.write_text(json.dumps(figures, indent=2))


async def wait_thread(event: threading.Event, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not event.is_set():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)


# One write per line (print() would make one write per argument when unbuffered): each
# line carries the program's own CLOCK_MONOTONIC at the moment of writing it.
PRINT_SLEEP_PRINT = """
import sys, time
sys.stdout.write(f"first {time.monotonic()}\\n"); sys.stdout.flush()
time.sleep(1)
sys.stdout.write(f"second {time.monotonic()}\\n"); sys.stdout.flush()
"""


async def test_first_output_arrives_live_well_before_the_result_and_resume_works() -> None:
    daemon, server, task = await start_daemon(keepalive=0.3)
    try:
        log = daemon.logs.open("exec_live")
        url = f"{daemon.url}/executions/exec_live/events"
        reader = Reader(url)
        reader.start()
        await wait_thread(reader.connected)
        result = await run_program(PRINT_SLEEP_PRINT, log, 10 * MIB)
        await asyncio.to_thread(reader.finish)
        kinds = [e.event for _, e in reader.arrivals]
        assert kinds[:2] == ["status", "status"] and kinds[-1] == "result"
        assert set(kinds[2:-1]) == {"stdout"}
        assert [int(e.id or 0) for _, e in reader.arrivals] == list(range(1, len(kinds) + 1))
        stdout_events = [(t, e) for t, e in reader.arrivals if e.event == "stdout"]
        first_at, first = stdout_events[0]
        result_at, result_event = reader.arrivals[-1]
        assert json.loads(first.data)["data"].startswith("first ")
        assert result_at - first_at >= 0.5, (first_at, result_at)
        # stdout-to-client delay: the program's own clock at print() vs arrival here.
        delays = []
        text = ""
        for t, e in stdout_events:
            text += json.loads(e.data)["data"]
            while "\n" in text:  # a line is delivered when the event holding its end arrives
                line, text = text.split("\n", 1)
                delays.append(t - float(line.split()[1]))
        assert len(delays) == 2
        assert max(delays) < 0.1 + 0.15, delays
        record("stdout_to_client_delay_ms", [round(d * 1000, 1) for d in delays])
        body = json.loads(result_event.data)
        assert body == {"execution_id": "exec_live", **result.model_dump(mode="json")}
        assert "".join(json.loads(e.data)["data"] for _, e in stdout_events) == result.stdout

        # Resume: everything after a given id, nothing twice, nothing missing.
        everything = [e for _, e in reader.arrivals]
        for after in (0, 1, 2, 3, len(everything) - 1, len(everything)):
            again = Reader(url, last_event_id=str(after))
            again.start()
            assert await asyncio.to_thread(again.finish) == everything[after:]
        bad = await asyncio.to_thread(lambda: httpx.get(url, headers={"Last-Event-ID": "x"}, timeout=5))
        assert bad.status_code == 500 or bad.status_code == 400  # api.py maps InvalidRequest
    finally:
        await stop(server, task)


async def test_resume_mid_run_after_a_disconnect() -> None:
    daemon, server, task = await start_daemon()
    try:
        log = daemon.logs.open("exec_resume")
        url = f"{daemon.url}/executions/exec_resume/events"
        first = Reader(url, stop_after=3)  # queued, running, first stdout: then hang up
        first.start()
        await wait_thread(first.connected)
        run = asyncio.create_task(run_program(PRINT_SLEEP_PRINT, log, 10 * MIB))
        head = await asyncio.to_thread(first.finish)
        assert not run.done(), "the first client left while the program still ran"
        second = Reader(url, last_event_id=head[-1].id)
        second.start()
        tail = await asyncio.to_thread(second.finish)
        await run
        full = log.events_after(0)
        assert [(e.id, e.event) for e in head + tail] == [(str(e.id), e.kind) for e in full]
    finally:
        await stop(server, task)


FLOOD = "import sys; sys.stdout.buffer.write(b'z' * (20 * 1024 * 1024)); sys.stdout.flush()"


READ_ALL = """
import sys, httpx
n = 0
with httpx.stream("GET", sys.argv[1], timeout=30) as r:
    for chunk in r.iter_raw():
        n += len(chunk)
print(n)
"""


def reading_process(url: str) -> Awaitable[asyncio.subprocess.Process]:
    """A client in its own process (no GIL shared with the server) that reads everything."""
    return asyncio.create_subprocess_exec(sys.executable, "-c", READ_ALL, url, stdout=asyncio.subprocess.PIPE)


def kernel_send_buffer_max() -> int:
    return int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])


def stalled_client(port: int, path: str) -> socket.socket:
    """Connects, asks for the stream, and then never reads."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return sock


async def test_a_client_that_never_reads_neither_blocks_nor_slows_the_run() -> None:
    daemon, server, task = await start_daemon(stall_timeout=1.0)
    timings: dict[str, list[float]] = {"alone": [], "reading_client": [], "stalled_client": []}
    sockets: list[socket.socket] = []
    try:
        for round_ in range(3):
            for mode in ("alone", "reading_client", "stalled_client"):
                execution_id = f"exec_flood_{mode}_{round_}"
                log = daemon.logs.open(execution_id)
                sock = None
                reader: asyncio.subprocess.Process | None = None
                if mode == "reading_client":
                    before = len(daemon.responses)
                    reader = await reading_process(f"{daemon.url}/executions/{execution_id}/events")
                    while len(daemon.responses) == before:
                        await asyncio.sleep(0.005)
                if mode == "stalled_client":
                    before = len(daemon.responses)
                    sock = stalled_client(daemon.port, f"/executions/{execution_id}/events?count=1")
                    sockets.append(sock)
                    while len(daemon.responses) == before:
                        await asyncio.sleep(0.005)
                started = time.monotonic()
                result = await run_program(FLOOD, log, 10 * MIB)
                timings[mode].append(time.monotonic() - started)
                assert result.stdout_truncated and len(result.stdout) == 10 * MIB
                assert log.truncated("stdout")
                if reader is not None:
                    out, _ = await asyncio.wait_for(reader.communicate(), 30)
                    assert int(out) > 10 * MIB
                if sock is not None:
                    response = daemon.responses[-1]
                    index = len(daemon.responses) - 1
                    handed = daemon.handed[index]
                    # The server handed the stalled client what the kernel's socket buffers
                    # take (autotuned up to tcp_wmem's maximum) plus uvicorn's 64 KiB, then
                    # waited; the daemon's own memory for it is that 64 KiB and one event.
                    assert handed < kernel_send_buffer_max() + 512 * 1024, handed
                    deadline = time.monotonic() + 5
                    while not response.stalled:
                        assert time.monotonic() < deadline, "the stalled client was never dropped"
                        await asyncio.sleep(0.05)
                    timings.setdefault("handed_to_stalled_kib", []).append(round(handed / 1024, 1))
                    # Dropped: the connection is closed once the client drains what was sent.
                    sock.settimeout(5)
                    got = 0
                    while chunk := await asyncio.to_thread(sock.recv, 65536):
                        got += len(chunk)
                    assert got < handed + 4096
                    sock.close()
        alone, stalled = min(timings["alone"]), min(timings["stalled_client"])
        reading = min(timings["reading_client"])
        record(
            "flood_20MiB_run_seconds",
            {k: [round(t, 3) for t in v] for k, v in timings.items() if not k.startswith("handed")},
        )
        record("handed_to_stalled_client_kib", timings["handed_to_stalled_kib"])
        # A stalled client costs the run no more than one that reads (what both cost is
        # the loop's time to encode and write what the socket takes), and never blocks it.
        assert stalled < reading * 1.5 + 0.1, timings
        assert stalled < alone * 3 + 0.2, timings
    finally:
        for sock in sockets:
            sock.close()
        await stop(server, task)


async def test_a_reading_client_gets_every_kept_byte_and_the_truncation_flag() -> None:
    daemon, server, task = await start_daemon()
    try:
        log = daemon.logs.open("exec_full")
        reader = Reader(f"{daemon.url}/executions/exec_full/events")
        reader.start()
        await wait_thread(reader.connected)
        result = await run_program(FLOOD, log, 10 * MIB)
        events = await asyncio.to_thread(reader.finish)
        out = [json.loads(e.data) for e in events if e.event == "stdout"]
        assert "".join(o["data"] for o in out) == result.stdout == "z" * (10 * MIB)
        assert [o.get("truncated", False) for o in out].count(True) == 1
        assert json.loads(events[-1].data)["stdout_truncated"] is True
        # Bounded events: 10 MiB arrive in events of at most FLUSH_BYTES each.
        assert max(len(o["data"]) for o in out) <= FLUSH_BYTES
        assert len(out) >= 10 * MIB // FLUSH_BYTES
    finally:
        await stop(server, task)


@pytest.mark.skipif(sys.platform != "linux", reason="loopback figures are for Linux")
async def test_unknown_execution_is_404() -> None:
    daemon, server, task = await start_daemon()
    try:
        response = await asyncio.to_thread(
            lambda: httpx.get(f"{daemon.url}/executions/nope/events", timeout=5)
        )
        assert response.status_code == 404
    finally:
        await stop(server, task)
