"""The dependency installer's only way out: a small forward proxy run by the daemon.

One proxy serves one install (its policy holds that install's index and what the index's
pages taught it) and is closed when pip ends, so nothing learned or held outlives the
install. pip reaches it through ``--proxy``: over a unix socket bound into pip's sandbox
(relayed to loopback TCP inside it by ``bootstrap/egress_relay.py``), or, where pip has no
network namespace of its own, on loopback TCP with a per-install password.

- ``CONNECT host:port`` (HTTPS): admitted by name, resolved here, every address checked,
  then a blind tunnel. The proxy cannot read HTTPS pages; see ``policy.py`` for how
  the file hosts of an HTTPS index are known.
- ``GET``/``HEAD http://...`` (plain HTTP): admitted the same way and relayed as one
  HTTP/1.0 exchange per connection; pages of the index are read on the way through and the
  hosts they link to are learned for the rest of the install.
- anything else (other methods, request bodies, odd heads) is refused.

Every denial is logged with host and port only (never paths, query strings or headers) and
counted in ``sandbox_dependency_egress_denied_total{reason}``. Bounds: connections at once,
head size and header count, a deadline for the head, idle timeouts both ways, a lifetime
per connection; a peer that stops reading or writing is dropped at the idle timeout.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType

import structlog

from ...metrics import EGRESS_DENIED
from .heads import (
    BadMessage,
    RequestHead,
    client_response_head,
    error_response,
    header,
    parse_request_head,
    parse_response_head,
    proxy_token_matches,
    upstream_request,
)
from .links import LinkCollector, target_of
from .policy import EgressPolicy, IPAddress, Target, parse_authority, parse_url_target
from .streams import Streams, content_length, relay_body, tunnel

log = structlog.get_logger(__name__)

# Every reason a connection is refused for (the metric's label values, all shown from the
# start so that an alert on their rate has a series to read).
DENIAL_REASONS = (
    "host_not_allowed",
    "address_loopback",
    "address_private",
    "address_link_local",
    "address_never",
    "forbidden_port",
    "bad_target",
    "bad_request",
    "method",
    "auth",
    "capacity",
    "head_too_large",
    "head_timeout",
)
for _reason in DENIAL_REASONS:
    EGRESS_DENIED.labels(reason=_reason)

Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]


async def system_resolver(host: str, port: int) -> list[IPAddress]:
    """The host's addresses from the system resolver (an IP literal is its own answer)."""
    with contextlib.suppress(ValueError):
        return [ipaddress.ip_address(host)]
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    found: list[IPAddress] = []
    for *_, sockaddr in infos:
        try:  # a scoped (link-local) answer does not parse: it is skipped, never used
            address = ipaddress.ip_address(sockaddr[0])
        except ValueError:
            continue
        if address not in found:
            found.append(address)
    return found


@dataclass(frozen=True)
class ProxyLimits:
    max_connections: int = 64
    max_head_bytes: int = 16 * 1024
    max_headers: int = 100
    head_timeout: float = 10.0
    resolve_timeout: float = 10.0
    connect_timeout: float = 10.0
    idle_timeout: float = 60.0
    max_connection_seconds: float = 900.0
    max_page_bytes: int = 64 * 1024 * 1024
    chunk: int = 64 * 1024


class Refused(Exception):
    """Answer ``status`` and end this connection; ``reason`` is the metric label."""

    def __init__(self, status: int, reason: str, target: Target | None = None, counted: bool = True) -> None:
        super().__init__(reason)
        self.status, self.reason, self.target, self.counted = status, reason, target, counted


class EgressProxy:
    """Serve one install's egress on a unix socket and/or a loopback TCP port."""

    def __init__(
        self,
        policy: EgressPolicy,
        *,
        limits: ProxyLimits | None = None,
        resolver: Resolver = system_resolver,
        token: str | None = None,
    ) -> None:
        self.policy = policy
        self.limits = limits or ProxyLimits()
        self.resolver = resolver
        self.token = token
        self.denied: collections.deque[tuple[str | None, int | None, str]] = collections.deque(maxlen=100)
        self._servers: list[asyncio.Server] = []
        self._handlers: set[asyncio.Task[None]] = set()
        self._unix_path: str | None = None

    @property
    def active_connections(self) -> int:
        return len(self._handlers)

    # ------------------------------------------------------------------ lifecycle
    async def pin_index(self) -> None:
        """Resolve the index once: its non-public addresses are the only ones it may use."""
        try:
            addresses = await asyncio.wait_for(
                self.resolver(self.policy.index.host, self.policy.index.port), self.limits.resolve_timeout
            )
        except (OSError, TimeoutError):
            addresses = []
        self.policy.index_addresses = frozenset(addresses)

    async def start_unix(self, path: str, owner: tuple[int, int] | None = None) -> None:
        """Listen on ``path`` (mode 0600, owned by ``owner`` when given: pip's uid)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        old = os.umask(0o177)
        try:
            server = await asyncio.start_unix_server(self._accept, path, limit=self.limits.max_head_bytes)
        finally:
            os.umask(old)
        if owner is not None:
            os.chown(path, *owner)
        self._servers.append(server)
        self._unix_path = path

    async def start_tcp(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on loopback TCP; returns the port. Use with a ``token``."""
        server = await asyncio.start_server(self._accept, host, port, limit=self.limits.max_head_bytes)
        self._servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    async def aclose(self) -> None:
        for server in self._servers:
            server.close()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=5)
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        if self._unix_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._unix_path)

    async def __aenter__(self) -> EgressProxy:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ connections
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        try:
            if len(self._handlers) >= self.limits.max_connections:
                self._deny(None, "capacity")
                writer.write(error_response(503, "egress proxy: too many connections"))
                return
            self._handlers.add(task)
            try:
                async with asyncio.timeout(self.limits.max_connection_seconds):
                    await self._handle(reader, writer)
            except Refused as refused:
                if refused.counted:
                    self._deny(refused.target, refused.reason)
                writer.write(error_response(refused.status, f"egress proxy: {refused.reason}"))
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the peer went away or stalled: nothing to answer
        finally:
            self._handlers.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await self._read_request(reader)
        if self.token is not None and not proxy_token_matches(request, self.token):
            writer.write(
                error_response(407, "egress proxy: credentials needed", (("Proxy-Authenticate", "Basic"),))
            )
            self._deny(None, "auth")
            return
        if request.method == "CONNECT":
            try:
                host, port = parse_authority(request.target, 0)
            except ValueError:
                raise Refused(400, "bad_target") from None
            if port == 0:
                raise Refused(400, "bad_target")
            target = Target("https", host, port)
            upstream = await self._open(target)
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await tunnel((reader, writer), upstream, self.limits.chunk, self.limits.idle_timeout)
        elif request.method in ("GET", "HEAD"):
            try:
                target, path = parse_url_target(request.target)
            except ValueError:
                raise Refused(400, "bad_target") from None
            if target.scheme != "http":
                raise Refused(400, "bad_target", target)
            up_reader, up_writer = await self._open(target)
            await self._relay(request, target, path, writer, (up_reader, up_writer))
        else:
            raise Refused(405, "method")

    async def _read_request(self, reader: asyncio.StreamReader) -> RequestHead:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.limits.head_timeout)
        except TimeoutError:
            raise Refused(408, "head_timeout") from None
        except asyncio.LimitOverrunError:
            raise Refused(431, "head_too_large") from None
        try:
            return parse_request_head(head, self.limits.max_headers)
        except BadMessage as bad:
            raise Refused(bad.status, "bad_request") from None

    async def _open(self, target: Target) -> Streams:
        """Admit ``target``, resolve it, check each address, connect to a permitted one."""
        decision = self.policy.admit(target)
        if not decision.allowed:
            raise Refused(403, decision.reason, target)
        try:
            addresses = await asyncio.wait_for(
                self.resolver(target.host, target.port), self.limits.resolve_timeout
            )
        except (OSError, TimeoutError):
            log.info("egress_resolve_failed", host=target.host, port=target.port)
            raise Refused(502, "resolve_failed", target, counted=False) from None
        verdicts = [(a, self.policy.admit_address(target, a)) for a in addresses]
        permitted = [a for a, verdict in verdicts if verdict.allowed]
        if not permitted:
            reason = verdicts[0][1].reason if verdicts else "resolve_failed"
            raise Refused(403 if verdicts else 502, reason, target, counted=bool(verdicts))
        for address in permitted:
            try:
                streams = await asyncio.wait_for(
                    asyncio.open_connection(str(address), target.port, limit=self.limits.max_head_bytes * 4),
                    self.limits.connect_timeout,
                )
            except (OSError, TimeoutError):
                continue
            peer = streams[1].get_extra_info("peername")
            # The socket was given an address, not a name; make sure that is what it reached.
            if peer and ipaddress.ip_address(peer[0]) == address:
                log.debug("egress_connected", host=target.host, port=target.port)
                return streams
            streams[1].close()
        log.info("egress_connect_failed", host=target.host, port=target.port)
        raise Refused(502, "connect_failed", target, counted=False)

    async def _relay(
        self,
        request: RequestHead,
        target: Target,
        path: str,
        client_writer: asyncio.StreamWriter,
        upstream: Streams,
    ) -> None:
        up_reader, up_writer = upstream
        is_index = target == self.policy.index
        try:
            up_writer.write(upstream_request(request, target, path, identity=is_index))
            await asyncio.wait_for(up_writer.drain(), self.limits.idle_timeout)
            try:
                head = await asyncio.wait_for(up_reader.readuntil(b"\r\n\r\n"), self.limits.idle_timeout)
                status_line, status, headers = parse_response_head(head, self.limits.max_headers)
            except (asyncio.LimitOverrunError, asyncio.IncompleteReadError, BadMessage):
                raise Refused(502, "bad_upstream", target, counted=False) from None
            page_url = f"{target}{path}"
            collector = None
            if is_index:
                location = header(headers, "location")
                if location and 300 <= status < 400:
                    self._learn(target_of(page_url, location))
                if request.method == "GET" and status == 200:
                    collector = LinkCollector(
                        page_url,
                        header(headers, "content-type") or "",
                        header(headers, "content-encoding") or "",
                        self.limits.max_page_bytes,
                    )
            client_writer.write(client_response_head(status_line, headers))
            if request.method != "HEAD":
                length = content_length(headers)
                limits = self.limits
                await relay_body(
                    up_reader,
                    client_writer,
                    collector,
                    length,
                    limits.chunk,
                    limits.idle_timeout,
                    self._learn,
                )
            await asyncio.wait_for(client_writer.drain(), self.limits.idle_timeout)
        finally:
            up_writer.close()

    def _learn(self, target: Target | None) -> None:
        if target is not None and self.policy.learn(target):
            log.info("egress_host_learned", host=target.host, port=target.port, scheme=target.scheme)

    def _deny(self, target: Target | None, reason: str) -> None:
        host, port = (target.host, target.port) if target is not None else (None, None)
        self.denied.append((host, port, reason))
        EGRESS_DENIED.labels(reason=reason).inc()
        log.warning("egress_denied", host=host, port=port, reason=reason)
