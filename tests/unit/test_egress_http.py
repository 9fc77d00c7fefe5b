"""The proxy's HTTP heads: what it accepts, what it forwards, what it answers."""

from __future__ import annotations

import base64

import pytest

from sandbox_executor.dependencies.egress.heads import (
    BadMessage,
    client_response_head,
    error_response,
    parse_request_head,
    parse_response_head,
    proxy_token_matches,
    upstream_request,
)
from sandbox_executor.dependencies.egress.policy import Target


def head(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def test_connect_and_absolute_get_parse() -> None:
    request = parse_request_head(head("CONNECT pypi.org:443 HTTP/1.1", "Host: pypi.org:443"))
    assert (request.method, request.target, request.version) == ("CONNECT", "pypi.org:443", "HTTP/1.1")
    request = parse_request_head(head("GET http://127.0.0.1:9/simple/ HTTP/1.1", "Accept:  text/html "))
    assert request.get("accept") == "text/html"


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (head("GET http://h/ HTTP/2.0"), 400),
        (head("GET  http://h/ HTTP/1.1"), 400),
        (head("GET http://h/\tx HTTP/1.1"), 400),
        (head("GET http://h/ HTTP/1.1", " folded: line"), 400),
        (head("GET http://h/ HTTP/1.1", "Bad Name: x"), 400),
        (head("GET http://h/ HTTP/1.1", "X: a\rb"), 400),
        (head("GET http://h/ HTTP/1.1", "X: caf\xe9"), 400),
        (head("GET http://h/ HTTP/1.1", "X: a\x00b"), 400),
        (head("GET http://h/ HTTP/1.1", "Transfer-Encoding: chunked"), 400),
        (head("GET http://h/ HTTP/1.1", "Content-Length: 5"), 400),
        (head("GET http://h/ HTTP/1.1", *[f"X-{i}: y" for i in range(101)]), 431),
        (head(""), 400),
    ],
)
def test_odd_heads_are_refused(raw: bytes, status: int) -> None:
    with pytest.raises(BadMessage) as caught:
        parse_request_head(raw)
    assert caught.value.status == status


def test_the_upstream_request_is_origin_form_without_proxy_headers() -> None:
    request = parse_request_head(
        head(
            "GET http://Index.local:9000/simple/a/?x=1 HTTP/1.1",
            "Host: attacker.example",
            "Proxy-Authorization: Basic c2VjcmV0",
            "Connection: keep-alive, X-Drop",
            "X-Drop: 1",
            "Accept-Encoding: br",
            "Authorization: Basic aW5kZXg6cGFzcw==",
            "Content-Length: 0",
        )
    )
    sent = upstream_request(request, Target("http", "index.local", 9000), "/simple/a/?x=1", identity=True)
    lines = sent.decode().split("\r\n")
    assert lines[0] == "GET /simple/a/?x=1 HTTP/1.0"
    assert lines[1] == "Host: index.local:9000"
    assert "Authorization: Basic aW5kZXg6cGFzcw==" in lines  # the index's own credentials
    assert "Accept-Encoding: identity" in lines
    assert lines[-3:] == ["Connection: close", "", ""]
    text = sent.decode().lower()
    for gone in ("proxy-authorization", "x-drop", "keep-alive", "attacker", ": br", "content-length"):
        assert gone not in text
    plain = upstream_request(request, Target("http", "index.local", 80), "/", identity=False)
    assert b"Host: index.local\r\n" in plain and b"Accept-Encoding: br" in plain


def test_response_heads() -> None:
    status_line, status, headers = parse_response_head(
        head(
            "HTTP/1.1 200 OK",
            "Content-Type: text/html",
            "Keep-Alive: timeout=5",
            "Transfer-Encoding: chunked",
        )
    )
    assert (status_line, status) == ("HTTP/1.1 200 OK", 200)
    relayed = client_response_head(status_line, headers).decode()
    assert "Keep-Alive" not in relayed and "Transfer-Encoding: chunked" in relayed
    assert relayed.endswith("Connection: close\r\n\r\n")
    for bad in (head("HTTP/2 200"), head("ICY 200 OK"), head("HTTP/1.1 99 x"), head("HTTP/1.1 200 OK", "x")):
        with pytest.raises(BadMessage):
            parse_response_head(bad)


def test_proxy_token() -> None:
    def with_auth(value: str) -> bytes:
        return head("CONNECT h:443 HTTP/1.1", f"Proxy-Authorization: {value}")

    good = base64.b64encode(b"pip:tok3n").decode()
    assert proxy_token_matches(parse_request_head(with_auth(f"Basic {good}")), "tok3n")
    for value in (
        f"Bearer {good}",
        "Basic " + base64.b64encode(b"pip:wrong").decode(),
        "Basic !!!",
        "Basic " + base64.b64encode(b"tok3n").decode(),
    ):
        assert not proxy_token_matches(parse_request_head(with_auth(value)), "tok3n")
    assert not proxy_token_matches(parse_request_head(head("CONNECT h:443 HTTP/1.1")), "tok3n")


def test_error_response_is_complete() -> None:
    raw = error_response(403, "egress proxy: host_not_allowed")
    head_text, _, body = raw.partition(b"\r\n\r\n")
    assert head_text.startswith(b"HTTP/1.1 403 Forbidden")
    assert f"Content-Length: {len(body)}".encode() in head_text
