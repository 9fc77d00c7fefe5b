"""HTTP/1.x message heads for the egress proxy: strict parsing and rewriting, no I/O.

The proxy speaks only what pip needs: ``CONNECT host:port`` and absolute-form ``GET`` /
``HEAD`` without a body. Anything else in a head (obs-folded lines, control characters,
bare CR, non-ASCII, duplicate or conflicting framing) is refused rather than guessed at.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
from dataclasses import dataclass

from .policy import DEFAULT_PORTS, Target

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_VALUE = re.compile(r"^[\t\x20-\x7e]*$")
_STATUS = re.compile(r"^HTTP/1\.[01] [1-5][0-9]{2}(?: [\t\x20-\x7e]*)?$")
# Never forwarded in either direction (RFC 9110 section 7.6.1, plus the proxy's own).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
Headers = list[tuple[str, str]]


class BadMessage(ValueError):
    """A head the proxy will not handle; ``status`` is what to answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class RequestHead:
    method: str
    target: str
    version: str
    headers: Headers

    def get(self, name: str) -> str | None:
        return header(self.headers, name)


def header(headers: Headers, name: str) -> str | None:
    """The value of ``name``; None when absent. Several values are joined like a list."""
    values = [v for n, v in headers if n.lower() == name]
    return ", ".join(values) if values else None


def _lines(head: bytes) -> list[str]:
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise BadMessage(400, "non_ascii_head") from None
    lines = text.split("\r\n")
    if lines[-2:] == ["", ""]:
        lines = lines[:-2]
    if any("\r" in line or "\n" in line for line in lines):
        raise BadMessage(400, "bare_cr_or_lf")
    return lines


def _headers(lines: list[str], max_headers: int) -> Headers:
    if len(lines) > max_headers:
        raise BadMessage(431, "too_many_headers")
    headers: Headers = []
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.match(name) or not _VALUE.match(value):
            raise BadMessage(400, "bad_header")
        headers.append((name, value.strip(" \t")))
    return headers


def parse_request_head(head: bytes, max_headers: int = 100) -> RequestHead:
    """Parse a request head (ending in CRLF CRLF)."""
    lines = _lines(head)
    parts = lines[0].split(" ") if lines else []
    if len(parts) != 3 or parts[2] not in ("HTTP/1.0", "HTTP/1.1") or not _TOKEN.match(parts[0]):
        raise BadMessage(400, "bad_request_line")
    if not parts[1] or not _VALUE.match(parts[1]) or "\t" in parts[1]:
        raise BadMessage(400, "bad_request_target")
    request = RequestHead(parts[0], parts[1], parts[2], _headers(lines[1:], max_headers))
    if request.get("transfer-encoding") is not None:
        raise BadMessage(400, "request_body")
    length = request.get("content-length")
    if length is not None and length.strip() != "0":
        raise BadMessage(400, "request_body")
    return request


def parse_response_head(head: bytes, max_headers: int = 100) -> tuple[str, int, Headers]:
    """(status line, status code, headers) of an upstream response head."""
    lines = _lines(head)
    if not lines or not _STATUS.match(lines[0]):
        raise BadMessage(502, "bad_upstream_status")
    return lines[0], int(lines[0][9:12]), _headers(lines[1:], max_headers)


def _end_to_end(headers: Headers) -> Headers:
    named = {v.strip().lower() for v in (header(headers, "connection") or "").split(",")}
    return [(n, v) for n, v in headers if n.lower() not in HOP_BY_HOP and n.lower() not in named]


def host_header(target: Target) -> str:
    host = f"[{target.host}]" if ":" in target.host else target.host
    return host if target.port == DEFAULT_PORTS[target.scheme] else f"{host}:{target.port}"


def upstream_request(request: RequestHead, target: Target, path: str, *, identity: bool) -> bytes:
    """The origin-form request sent upstream: HTTP/1.0 (so no chunked answer), the Host of
    the absolute URL, end-to-end headers only, and ``Connection: close``."""
    headers = [(n, v) for n, v in _end_to_end(request.headers) if n.lower() not in ("host", "content-length")]
    if identity:
        headers = [(n, v) for n, v in headers if n.lower() != "accept-encoding"]
        headers.append(("Accept-Encoding", "identity"))
    lines = [f"{request.method} {path} HTTP/1.0", f"Host: {host_header(target)}"]
    lines += [f"{n}: {v}" for n, v in headers]
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def client_response_head(status_line: str, headers: Headers) -> bytes:
    """The upstream head as relayed to pip: hop-by-hop headers gone, the connection ends."""
    kept = [(n, v) for n, v in headers if n.lower() not in HOP_BY_HOP - {"transfer-encoding"}]
    lines = [status_line, *(f"{n}: {v}" for n, v in kept), "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def error_response(status: int, text: str, extra: tuple[tuple[str, str], ...] = ()) -> bytes:
    """A small plain-text answer of the proxy itself."""
    reasons = {
        400: "Bad Request",
        403: "Forbidden",
        405: "Method Not Allowed",
        407: "Proxy Authentication Required",
        408: "Request Timeout",
        431: "Request Header Fields Too Large",
        502: "Bad Gateway",
        503: "Service Unavailable",
        504: "Gateway Timeout",
    }
    body = (text + "\n").encode("ascii", "replace")
    lines = [f"HTTP/1.1 {status} {reasons.get(status, 'Error')}", "Content-Type: text/plain"]
    lines += [f"{n}: {v}" for n, v in extra]
    lines += [f"Content-Length: {len(body)}", "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body


def proxy_token_matches(request: RequestHead, token: str) -> bool:
    """Whether ``Proxy-Authorization: Basic`` carries ``token`` as its password."""
    value = request.get("proxy-authorization") or ""
    scheme, _, encoded = value.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return False
    _, _, password = decoded.partition(":")
    return hmac.compare_digest(password.encode(), token.encode())
