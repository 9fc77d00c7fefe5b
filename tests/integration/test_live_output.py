"""Live output end to end: a real daemon (`sandbox-executor serve`), real sandboxes, and a
real SSE client (httpx2's EventSource, a parser we did not write) reading over loopback;
results also go to a fake control plane, to show that streams never hold the callback.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest

from sandbox_executor.streaming import FLUSH_BYTES
from tests.support.fake_control_plane import FakeControlPlane
from tests.support.server import RunningServer, running_server
from tests.support.sse_client import SSEParser

TOKEN = "live-token-" + uuid.uuid4().hex[:8]
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CAP = 4 * 1024 * 1024
FIGURES = Path(os.environ.get("STREAM_FIGURES", "/tmp/live-output-figures.json"))

pytestmark = pytest.mark.timeout(120)


@dataclass
class Live:
    server: RunningServer
    cp: FakeControlPlane

    @property
    def url(self) -> str:
        return self.server.url

    def body(self, code: str, **fields: Any) -> dict[str, Any]:
        return {
            "execution_id": f"exec_live_{uuid.uuid4().hex[:10]}",
            "language": "python",
            "code": code,
            **fields,
        }


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    with FakeControlPlane() as cp:
        env = {
            "EXECUTOR_API_TOKEN": TOKEN,
            "CONTROL_PLANE_URL": cp.url,
            "MAX_OUTPUT_BYTES": str(CAP),
            "STREAM_KEEPALIVE_SECONDS": "0.3",
            "STREAM_STALL_TIMEOUT_SECONDS": "2",
            "MAX_QUEUED_EXECUTIONS": "1",
        }
        with running_server(env) as server:
            yield Live(server, cp)


def read_events(response: httpx2.Response) -> list[tuple[float, httpx2.ServerSentEvent]]:
    """Every event of a stream with its arrival time, until the server ends it."""
    assert response.status_code == 200, response.read()
    # The result event is as large as the ?wait=true body (outputs up to their caps).
    return [(time.monotonic(), event) for event in httpx2.EventSource(response, max_event_size=None)]


def stream(live: Live, body: dict[str, Any]) -> list[tuple[float, httpx2.ServerSentEvent]]:
    with httpx2.Client(headers=AUTH, timeout=60) as client:
        with client.stream("POST", f"{live.url}/execute?stream=true", json=body) as response:
            return read_events(response)


def events_of(live: Live, execution_id: str, **headers: str) -> list[httpx2.ServerSentEvent]:
    with httpx2.Client(headers={**AUTH, **headers}, timeout=60) as client:
        with client.stream("GET", f"{live.url}/executions/{execution_id}/events") as response:
            return [event for _, event in read_events(response)]


def record(name: str, value: object) -> None:
    figures = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    FIGURES.write_text(json.dumps({**figures, name: value}, indent=2))


# One write per line, each carrying the program's own CLOCK_MONOTONIC (one clock for every
# process of the machine, sandboxes included).
PRINT_SLEEP_PRINT = """
import sys, time
def handler(event):
    sys.stdout.write(f"first {time.monotonic()}\\n"); sys.stdout.flush()
    sys.stderr.buffer.write(b"bad \\xff byte\\n"); sys.stderr.flush()
    time.sleep(1)
    sys.stdout.write(f"second {time.monotonic()}\\n"); sys.stdout.flush()
    return "done"
"""


def test_the_first_output_arrives_live_well_before_the_one_result(live: Live) -> None:
    body = live.body(PRINT_SLEEP_PRINT)
    arrivals = stream(live, body)
    kinds = [e.event for _, e in arrivals]
    assert kinds[:2] == ["status", "status"], kinds
    assert [json.loads(e.data)["status"] for _, e in arrivals[:2]] == ["queued", "running"]
    assert kinds.count("result") == 1 and kinds[-1] == "result"
    assert set(kinds[2:-1]) == {"stdout", "stderr"}
    assert [int(e.id) for _, e in arrivals] == list(range(1, len(arrivals) + 1))

    stdout = [(t, e) for t, e in arrivals if e.event == "stdout"]
    first_at, first = stdout[0]
    result_at, result = arrivals[-1]
    assert json.loads(first.data)["data"].startswith("first ")
    assert result_at - first_at >= 0.5, (first_at, result_at)
    # stdout-to-client delay: a line counts once the event holding its end arrived.
    delays, text = [], ""
    for arrived, event in stdout:
        text += json.loads(event.data)["data"]
        while "\n" in text:
            line, text = text.split("\n", 1)
            delays.append(arrived - float(line.split()[1]))
    assert len(delays) == 2 and max(delays) < 0.25, delays
    record("stdout_to_client_delay_ms", [round(d * 1000, 1) for d in delays])

    # Invalid UTF-8 replaced, as in the result; the result event is the ?wait=true body.
    stderr = "".join(json.loads(e.data)["data"] for _, e in arrivals if e.event == "stderr")
    assert stderr == "bad \ufffd byte\n"
    final = json.loads(result.data)
    waited = httpx.post(f"{live.url}/execute?wait=true", json=body, headers=AUTH, timeout=30)
    assert waited.status_code == 200 and final == waited.json()
    assert final["stdout"] == "".join(json.loads(e.data)["data"] for _, e in stdout)
    assert (final["status"], final["return_value"], final["stderr"]) == ("success", "done", stderr)
    # The control plane got the same result, once.
    reported = live.cp.wait_for("result", execution_id=body["execution_id"], timeout=10)
    assert len(reported) == 1 and reported[0].json["stdout"] == final["stdout"]


def test_resume_after_any_event_by_header_or_query_and_midway(live: Live) -> None:
    body = live.body(PRINT_SLEEP_PRINT)
    eid = body["execution_id"]
    with httpx2.Client(headers=AUTH, timeout=60) as client:
        with client.stream("POST", f"{live.url}/execute?stream=true", json=body) as response:
            source = iter(httpx2.EventSource(response, max_event_size=None))
            head = [next(source), next(source), next(source)]  # queued, running, first output
        # Hung up mid-run; the run goes on and the stream resumes exactly after the last id.
        tail = events_of(live, eid, **{"Last-Event-ID": head[-1].id})
    assert tail[0].id == str(int(head[-1].id) + 1) and tail[-1].event == "result"
    everything = events_of(live, eid)
    assert [(e.id, e.event, e.data) for e in head + tail] == [(e.id, e.event, e.data) for e in everything]
    for after in (1, 3, len(everything) - 1, len(everything)):
        assert events_of(live, eid, **{"Last-Event-ID": str(after)}) == everything[after:]
        by_query = httpx.get(f"{live.url}/executions/{eid}/events?last_event_id={after}", headers=AUTH)
        parser = SSEParser()
        assert [e.id for e in parser.feed(by_query.content)] == [e.id for e in everything[after:]]
    # The run's one callback was not disturbed by the client that left.
    assert len(live.cp.wait_for("result", execution_id=eid, timeout=10)) == 1


def test_idle_streams_get_comments_and_a_replayed_post_streams_the_same_run(live: Live) -> None:
    body = live.body("import time\ndef handler(event):\n    time.sleep(1)\n    print('late')\n")
    with httpx.Client(headers=AUTH, timeout=60) as client:
        with client.stream("POST", f"{live.url}/execute?stream=true", json=body) as response:
            parser = SSEParser()
            # The control plane's retry of the same request: the same execution, streamed.
            replay = client.post(f"{live.url}/execute?stream=true", json=body)
            for chunk in response.iter_raw():
                parser.feed(chunk)
    assert parser.comments, "the idle second got keep-alive comments"
    again = SSEParser().feed(replay.content)
    assert [(e.id, e.event, e.data) for e in again] == [(e.id, e.event, e.data) for e in parser.events]
    assert [e.event for e in parser.events].count("result") == 1
    assert len(live.cp.wait_for("result", execution_id=body["execution_id"], timeout=10)) == 1


def test_errors_before_acceptance_stay_json(live: Live) -> None:
    body = live.body("def handler(event):\n    return 1\n")
    url = f"{live.url}/execute?stream=true"
    answers = {
        "no token": httpx.post(url, json=body),
        "bad body": httpx.post(url, json={**body, "language": "cobol"}, headers=AUTH),
        "bad Last-Event-ID": httpx.post(url, json=body, headers={**AUTH, "Last-Event-ID": "x"}),
        "unknown events": httpx.get(f"{live.url}/executions/exec_nope/events", headers=AUTH),
    }
    assert {k: r.status_code for k, r in answers.items()} == {
        "no token": 401,
        "bad body": 400,
        "bad Last-Event-ID": 400,
        "unknown events": 404,
    }
    assert httpx.get(f"{live.url}/executions/{body['execution_id']}", headers=AUTH).status_code == 404
    # Same id, other code: 409; a full queue (one running, one waiting): 503.
    sleeper = live.body("import time\ndef handler(event):\n    time.sleep(1.5)\n")
    assert httpx.post(f"{live.url}/execute", json=sleeper, headers=AUTH).status_code == 200
    answers["conflict"] = httpx.post(url, json={**sleeper, "code": "x = 1"}, headers=AUTH)
    waiting = httpx.post(f"{live.url}/execute", json=live.body("x = 1"), headers=AUTH)
    answers["queue full"] = httpx.post(url, json=live.body("x = 2"), headers=AUTH)
    assert waiting.status_code == 200
    assert (answers["conflict"].status_code, answers["queue full"].status_code) == (409, 503)
    for name, answer in answers.items():
        assert answer.headers["content-type"] == "application/json", name
        assert answer.json()["error_code"].startswith("Executor."), name
    finished(live, waiting.json()["execution_id"])


def test_caps_and_truncation_flags_apply_to_the_stream(live: Live) -> None:
    code = (
        "import sys\ndef handler(event):\n"
        f"    sys.stdout.write('a' * {CAP + 100_000}); sys.stdout.flush()\n"
        "    sys.stderr.write('short'); sys.stderr.flush()\n"
    )
    arrivals = stream(live, live.body(code))
    out = [json.loads(e.data) for _, e in arrivals if e.event == "stdout"]
    result = json.loads(arrivals[-1][1].data)
    assert "".join(o["data"] for o in out) == result["stdout"] == "a" * CAP
    assert [o.get("truncated", False) for o in out].count(True) == 1
    assert max(len(o["data"]) for o in out) <= FLUSH_BYTES  # bounded events, however big the burst
    assert (result["stdout_truncated"], result["stderr_truncated"]) == (True, False)
    err = [json.loads(e.data) for _, e in arrivals if e.event == "stderr"]
    assert [o["data"] for o in err] == ["short"] and not any("truncated" in o for o in err)


FLOOD = """
import sys, time
def handler(event):
    chunk = b"z" * 65536
    for _ in range(80):  # 5 MiB, over the 4 MiB cap
        sys.stdout.buffer.write(chunk)
    sys.stdout.flush()
    return time.monotonic()
"""


def stalled_post(live: Live, body: dict[str, Any]) -> socket.socket:
    """POST ?stream=true, then never read a byte (a tiny receive buffer)."""
    raw = json.dumps(body).encode()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", live.server.port))
    head = (
        f"POST /execute?stream=true HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(raw)}\r\n\r\n"
    )
    sock.sendall(head.encode() + raw)
    return sock


def finished(live: Live, execution_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        doc = httpx.get(f"{live.url}/executions/{execution_id}", headers=AUTH).json()
        if doc["status"] not in ("queued", "running"):
            return dict(doc)
        time.sleep(0.02)
    raise AssertionError(f"{execution_id} did not finish")


def test_a_client_that_stops_reading_slows_neither_the_run_nor_the_callback(live: Live) -> None:
    figures: dict[str, list[float]] = {"alone_s": [], "stalled_s": [], "alone_cb_ms": [], "stalled_cb_ms": []}
    sockets = []
    try:
        for _ in range(2):
            for mode in ("alone", "stalled"):
                body = live.body(FLOOD)
                if mode == "stalled":
                    sockets.append(stalled_post(live, body))
                else:
                    assert httpx.post(f"{live.url}/execute", json=body, headers=AUTH).status_code == 200
                result = finished(live, body["execution_id"])
                assert result["status"] == "success" and result["stdout_truncated"]
                callback = live.cp.wait_for("result", execution_id=body["execution_id"], timeout=10)[0]
                figures[f"{mode}_s"].append(result["execution_time"])
                figures[f"{mode}_cb_ms"].append(
                    round((callback.arrived_monotonic - result["return_value"]) * 1000, 1)
                )
        # Neither the run nor its callback waited for the client that does not read.
        assert min(figures["stalled_s"]) < min(figures["alone_s"]) * 2 + 0.3, figures
        assert min(figures["stalled_cb_ms"]) < min(figures["alone_cb_ms"]) + 500, figures
        # After STREAM_STALL_TIMEOUT_SECONDS without progress the daemon hangs up: the client
        # drains what the kernel buffered, then reads EOF.
        deadline = time.monotonic() + 10
        while live.server.log_path.read_text().count("event_stream_client_stalled") < len(sockets):
            assert time.monotonic() < deadline, "the stalled clients were never dropped"
            time.sleep(0.1)
        # ... and says so in a warning of its own, not the server's error for an unfinished answer.
        assert "without completing response" not in live.server.log_path.read_text()
        sock = sockets[-1]
        sock.settimeout(10)
        got = 0
        while chunk := sock.recv(1 << 20):
            got += len(chunk)
        assert 0 < got < CAP, got
        record("slow_client", {**figures, "stalled_client_got_kib": got // 1024})
    finally:
        for sock in sockets:
            sock.close()
