"""Learning download hosts from the index's pages, as pip would resolve the links."""

from __future__ import annotations

import gzip
import json
import zlib

from sandbox_executor.dependencies.egress.links import LinkCollector
from sandbox_executor.dependencies.egress.policy import Target

PAGE = "http://127.0.0.1:9000/simple/alpha/"


def collect(
    body: bytes, ctype: str = "text/html", encoding: str = "", step: int = 7, **kw: int
) -> set[Target]:
    collector = LinkCollector(PAGE, ctype, encoding, **kw)
    for i in range(0, len(body), step):  # chunks that cut tags and URLs in half
        collector.feed(body[i : i + step])
    return collector.close()


def test_pep503_anchors_absolute_relative_and_protocol_relative() -> None:
    body = b"""<html><body>
    <a href="https://files.example.com/packages/alpha-1.0.whl#sha256=00">alpha-1.0.whl</a>
    <a href="/files/alpha-1.1.whl">rel</a>
    <A HREF="//cdn.example.net/alpha-1.2.tar.gz">proto-relative</A>
    <a href="http://Mirror.Example.org:8080/alpha-1.3.whl">port</a>
    <a href="http://u:p@evil.example/x.whl">userinfo: not learned</a>
    <a href="ftp://ftp.example/x.whl">ftp</a>
    <a href="https://files.example.com/packages/alpha-2.0.whl">dup</a>
    <link href="https://not-an-anchor.example/x">
    </body></html>"""
    assert collect(body) == {
        Target("https", "files.example.com", 443),
        Target("http", "127.0.0.1", 9000),
        Target("http", "cdn.example.net", 80),
        Target("http", "mirror.example.org", 8080),
    }


def test_base_href_changes_where_relative_links_go() -> None:
    body = b'<base href="https://dl.example.com/root/"><a href="alpha-1.0.whl">a</a>'
    assert collect(body, "application/vnd.pypi.simple.v1+html") == {Target("https", "dl.example.com", 443)}


def test_pep691_json() -> None:
    page = {
        "meta": {"api-version": "1.1"},
        "name": "alpha",
        "files": [
            {"filename": "alpha-1.0.whl", "url": "https://files.example.com/a.whl", "hashes": {}},
            {"filename": "alpha-1.1.whl", "url": "../../files/alpha-1.1.whl", "hashes": {}},
            {"filename": "x", "url": 5},
            "junk",
        ],
    }
    body = json.dumps(page).encode()
    assert collect(body, "application/vnd.pypi.simple.v1+json") == {
        Target("https", "files.example.com", 443),
        Target("http", "127.0.0.1", 9000),
    }
    assert collect(b"{not json", "application/vnd.pypi.simple.v1+json") == set()


def test_compressed_pages() -> None:
    body = b'<a href="https://files.example.com/a.whl">a</a>'
    expected = {Target("https", "files.example.com", 443)}
    assert collect(gzip.compress(body), encoding="gzip") == expected
    assert collect(zlib.compress(body), encoding="deflate") == expected
    assert collect(body, encoding="br") == set()  # cannot read it: learns nothing
    assert collect(b"not gzip at all", encoding="gzip") == set()


def test_other_bodies_and_oversized_pages_teach_nothing() -> None:
    body = b'<a href="https://files.example.com/a.whl">a</a>'
    assert collect(body, "application/octet-stream") == set()
    assert collect(body, "text/plain") == set()
    assert collect(body + b" " * 100, max_bytes=64) == set()
    bomb = gzip.compress(b"<p>" + b" " * 10_000_000)
    collector = LinkCollector(PAGE, "text/html", "gzip", max_bytes=1_000_000)
    collector.feed(bomb)
    assert collector.overflowed and collector.close() == set()
