"""Live output (``?stream=true``, ``/executions/{id}/events``): what it costs and how fast it is.

Part of ``make bench`` (benchmarks/run.py calls :func:`measure`); runnable alone as root:

    .venv/bin/python benchmarks/live_output.py [--quick]

On one daemon (warm pool on, a fake control plane receiving the callbacks):

* **stream vs wait**: a warm python hello world, ``POST /execute?wait=true`` to the full
  response and ``POST /execute?stream=true`` to the end of the stream, interleaved, each
  after the pool has a sandbox ready; the target is a median difference of at most 1 ms;
* **stdout to client**: a program writes a line stamped with its own ``time.monotonic()``
  every 150 ms (more than the 100 ms coalescing window, so each goes out at once); the delay
  is the line's arrival at an SSE client minus its stamp (one clock for every process);
* **slow clients**: a program writes 20 MiB to stdout (10 MiB kept) with no client, a client
  reading everything, one that never reads (a raw socket), one that disconnects after the
  first event, and ten that never read; for each: the run's execution_time, the callback's
  arrival minus the handler's return, and the daemon's RSS growth over the run (the
  execution's own kept output included: compare with "alone"); then 50 clients that never
  read replay that finished execution: the daemon's RSS and the kernel's TCP buffer memory
  (``/proc/net/sockstat``) held per client while they stall.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "src"))

import httpx  # noqa: E402

from tests.support.server import RunningServer, start_server, stop_server  # noqa: E402

HELLO = "import time\ndef handler(event):\n    print('hello world')\n    return time.monotonic()\n"
STAMPED_LINES = (
    "import sys, time\ndef handler(event):\n"
    "    for n in range({n}):\n"
    "        sys.stdout.write(f'{{time.monotonic()}}\\n'); sys.stdout.flush()\n"
    "        time.sleep(0.15)\n"
)
FLOOD = (
    "import sys, time\ndef handler(event):\n"
    "    chunk = b'z' * 65536\n"
    "    for _ in range(320):\n"
    "        sys.stdout.buffer.write(chunk)\n"
    "    sys.stdout.flush()\n"
    "    return time.monotonic()\n"
)
SLOW_MODES = ("alone", "reading", "stalled", "disconnected", "stalled_x10")

Records = Callable[[], list[dict[str, Any]]]


def _summary(values_ms: list[float]) -> dict[str, float]:
    ordered = sorted(values_ms)
    return {
        "n": len(ordered),
        "median_ms": round(statistics.median(ordered), 3),
        "p95_ms": round(ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))], 3),
        "max_ms": round(ordered[-1], 3),
    }


def _rss_kib(server: RunningServer) -> int:
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _events(chunks: Any) -> list[tuple[float, str, str]]:
    """(arrival, event, data) of each event read from raw SSE chunks."""
    out: list[tuple[float, str, str]] = []
    buffer = b""
    for chunk in chunks:
        buffer += chunk
        while b"\n\n" in buffer:
            block, buffer = buffer.split(b"\n\n", 1)
            fields = dict(
                line.split(": ", 1) for line in block.decode().split("\n") if not line.startswith(":")
            )
            if "event" in fields:
                out.append((time.monotonic(), fields["event"], fields["data"]))
    return out


class Bench:
    def __init__(self, server: RunningServer) -> None:
        self.server = server
        self.client = httpx.Client(base_url=server.url, timeout=60)
        self.count = 0

    def body(self, code: str) -> dict[str, Any]:
        self.count += 1
        return {
            "execution_id": f"exec_live_{self.count:06d}",
            "language": "python",
            "code": code,
            "timeout": 30,
        }

    def ready(self) -> None:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            if 'sandbox_warm_pool_ready{language="python"} 1.0' in self.client.get("/metrics").text:
                return
            time.sleep(0.005)

    def wait(self, code: str) -> float:
        started = time.perf_counter()
        response = self.client.post("/execute", params={"wait": "true"}, json=self.body(code))
        elapsed = time.perf_counter() - started
        assert response.json()["status"] == "success", response.text[:500]
        return elapsed

    def stream(self, code: str) -> tuple[float, list[tuple[float, str, str]]]:
        started = time.perf_counter()
        with self.client.stream(
            "POST", "/execute", params={"stream": "true"}, json=self.body(code)
        ) as response:
            events = _events(response.iter_raw())
        elapsed = time.perf_counter() - started
        assert events[-1][1] == "result" and json.loads(events[-1][2])["status"] == "success"
        return elapsed, events

    def finished(self, execution_id: str) -> dict[str, Any]:
        while True:
            # A raw-socket POST may not have reached the daemon yet: 404 until it has.
            doc: dict[str, Any] = self.client.get(f"/executions/{execution_id}").json()
            if doc.get("status", "queued") not in ("queued", "running"):
                return doc
            time.sleep(0.01)

    def raw_socket(self, request: bytes) -> socket.socket:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", self.server.port))
        sock.sendall(request)
        return sock


def stream_vs_wait(bench: Bench, n: int) -> dict[str, Any]:
    wait, stream = [], []
    for _ in range(n):
        bench.ready()
        wait.append(bench.wait(HELLO) * 1000)
        bench.ready()
        stream.append(bench.stream(HELLO)[0] * 1000)
    w, s = _summary(wait), _summary(stream)
    return {"wait": w, "stream": s, "added_median_ms": round(s["median_ms"] - w["median_ms"], 3)}


def stdout_to_client(bench: Bench, lines: int) -> dict[str, Any]:
    _, events = bench.stream(STAMPED_LINES.format(n=lines))
    delays, text = [], ""
    for arrived, kind, data in events:
        if kind == "stdout":
            text += json.loads(data)["data"]
            while "\n" in text:
                line, text = text.split("\n", 1)
                delays.append((arrived - float(line)) * 1000)
    return _summary(delays)


def slow_clients(bench: Bench, records: Records, rounds: int) -> dict[str, Any]:
    bench.wait(FLOOD)  # the heap grows to hold one kept flood once, before any reading
    out: dict[str, dict[str, list[float]]] = {
        m: {"run_s": [], "callback_ms": [], "rss_growth_kib": []} for m in SLOW_MODES
    }
    for _ in range(rounds):
        for mode in SLOW_MODES:
            body = bench.body(FLOOD)
            raw = json.dumps(body).encode()
            post = (
                b"POST /execute?stream=true HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(raw)}\r\n\r\n".encode()
                + raw
            )
            sockets: list[socket.socket] = []
            bench.ready()
            rss_before = _rss_kib(bench.server)
            if mode == "alone":
                bench.client.post("/execute", json=body)
            elif mode == "reading":
                with bench.client.stream(
                    "POST", "/execute", params={"stream": "true"}, json=body
                ) as response:
                    for _chunk in response.iter_raw():
                        pass
            elif mode == "disconnected":
                sock = bench.raw_socket(post)
                sock.recv(1)
                sock.close()
            else:
                sockets.append(bench.raw_socket(post))
                if mode == "stalled_x10":
                    get = (
                        f"GET /executions/{body['execution_id']}/events HTTP/1.1\r\nHost: x\r\n\r\n".encode()
                    )
                    sockets += [bench.raw_socket(get) for _ in range(9)]
            result = bench.finished(body["execution_id"])
            rss_after = _rss_kib(bench.server)
            time.sleep(0.3)
            arrivals = {r["execution_id"]: r["arrived"] for r in records() if r["kind"] == "result"}
            returned = result["return_value"]
            out[mode]["run_s"].append(result["execution_time"])
            if body["execution_id"] in arrivals:
                out[mode]["callback_ms"].append(round((arrivals[body["execution_id"]] - returned) * 1000, 1))
            out[mode]["rss_growth_kib"].append(rss_after - rss_before)
            for sock in sockets:
                sock.close()
    report: dict[str, Any] = {
        mode: {
            "run_s_min": min(v["run_s"]),
            "run_s": v["run_s"],
            "callback_ms": v["callback_ms"],
            "rss_growth_kib": v["rss_growth_kib"],
        }
        for mode, v in out.items()
    }
    report["held_per_stalled_client"] = held_by_stalled_clients(bench, body["execution_id"], 50)
    return report


def _tcp_mem_kib() -> int:
    for line in Path("/proc/net/sockstat").read_text().splitlines():
        if line.startswith("TCP:"):
            fields = line.split()
            return int(fields[fields.index("mem") + 1]) * 4  # pages
    return 0


def held_by_stalled_clients(bench: Bench, execution_id: str, count: int) -> dict[str, float]:
    """Memory that ``count`` clients replaying ``execution_id`` and never reading hold."""
    get = f"GET /executions/{execution_id}/events HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    time.sleep(1.0)  # the clients of the runs above are gone and their memory freed
    rss, tcp = _rss_kib(bench.server), _tcp_mem_kib()
    sockets = [bench.raw_socket(get) for _ in range(count)]
    try:
        time.sleep(1.0)  # each takes what its socket buffers hold, then stalls
        return {
            "clients": count,
            "daemon_rss_kib": round((_rss_kib(bench.server) - rss) / count, 1),
            "kernel_tcp_kib": round((_tcp_mem_kib() - tcp) / count, 1),
        }
    finally:
        for sock in sockets:
            sock.close()


def _daemon(env: dict[str, str]) -> Bench:
    bench = Bench(start_server({"WARM_POOL_SIZE": "1", "EXECUTIONS_RETENTION_COUNT": "50", **env}))
    bench.ready()
    bench.wait(HELLO)  # first-run effects are not the path
    return bench


def _close(bench: Bench) -> None:
    bench.client.close()
    stop_server(bench.server)


def measure(control_plane_url: str, records: Records, scale: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    # Standalone (no control plane): both answers end when the result is recorded. With a
    # control plane ?wait=true also waits for the result's durable commit to the outbox,
    # which a stream's result event does not.
    bench = _daemon({})
    try:
        out["stream_vs_wait_python_warm"] = stream_vs_wait(bench, max(10, int(60 * scale)))
        out["stdout_to_client"] = stdout_to_client(bench, max(10, int(30 * scale)))
    finally:
        _close(bench)
    bench = _daemon(
        {
            "CONTROL_PLANE_URL": control_plane_url,
            "HOSTNAME": "bench-live",
            "STREAM_STALL_TIMEOUT_SECONDS": "5",
        }
    )
    try:
        out["slow_clients_20MiB_flood"] = slow_clients(bench, records, max(1, round(3 * scale)))
    finally:
        _close(bench)
    return out


def print_report(live: dict[str, Any]) -> None:
    sw = live["stream_vs_wait_python_warm"]
    print("\nLive output (warm python hello; ms)")
    print(f"  ?wait=true    median {sw['wait']['median_ms']:.2f}  p95 {sw['wait']['p95_ms']:.2f}")
    print(
        f"  ?stream=true  median {sw['stream']['median_ms']:.2f}  p95 {sw['stream']['p95_ms']:.2f}"
        f"  (added {sw['added_median_ms']:+.2f})"
    )
    d = live["stdout_to_client"]
    print(f"  stdout write -> SSE client: median {d['median_ms']:.2f}  p95 {d['p95_ms']:.2f}", end="")
    print(f"  max {d['max_ms']:.2f}")
    print("  20 MiB of stdout (10 MiB kept): run s (min) / callback ms / daemon RSS growth KiB")
    slow = dict(live["slow_clients_20MiB_flood"])
    held = slow.pop("held_per_stalled_client")
    for mode, v in slow.items():
        print(f"    {mode:<13} {v['run_s_min']:.3f}  {v['callback_ms']}  {v['rss_growth_kib']}")
    print(
        f"  held per stalled client ({held['clients']} replaying it): daemon RSS "
        f"{held['daemon_rss_kib']} KiB, kernel TCP buffers {held['kernel_tcp_kib']} KiB"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    from benchmarks.run import FakeControlPlaneProcess

    cp = FakeControlPlaneProcess()
    try:
        live = measure(cp.url, cp.records, 1 / 3 if args.quick else 1.0)
    finally:
        cp.close()
    print_report(live)
    print(json.dumps(live, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
