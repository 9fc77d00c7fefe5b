"""The hosts an index page links to, read while the proxy relays it (PEP 503 / PEP 691).

Fed the body in chunks as it passes; keeps no more than the JSON form needs. Links are
resolved like pip resolves them (``urljoin`` against the page URL, or the page's first
``<base href>``), then parsed strictly: a link the strict parser refuses teaches nothing,
so pip's request for it is then denied (fail closed).
"""

from __future__ import annotations

import codecs
import json
import zlib
from html.parser import HTMLParser
from urllib.parse import urljoin

from .policy import Target, parse_url_target

HTML_TYPES = ("text/html", "application/vnd.pypi.simple.v1+html")
JSON_TYPES = ("application/vnd.pypi.simple.v1+json",)
DEFAULT_MAX_BYTES = 64 * 1024 * 1024


def target_of(base: str, href: str) -> Target | None:
    """The target an ``href`` on page ``base`` points to; None when it is not plain."""
    try:
        return parse_url_target(urljoin(base, href.strip()))[0]
    except ValueError:
        return None


class _AnchorParser(HTMLParser):
    def __init__(self, base: str) -> None:
        super().__init__(convert_charrefs=True)
        self.base = base
        self.base_set = False
        self.found: set[Target] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in ("a", "base"):
            return
        href = next((value for name, value in attrs if name == "href" and value), None)
        if href is None:
            return
        target = target_of(self.base, href)
        if target is not None:
            self.found.add(target)
        if tag == "base" and not self.base_set:
            self.base, self.base_set = urljoin(self.base, href), True


class LinkCollector:
    """Collects link targets from one response body of the index."""

    def __init__(
        self, page_url: str, content_type: str, content_encoding: str, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        self.page_url = page_url
        media = content_type.split(";", 1)[0].strip().lower()
        self.kind = "html" if media in HTML_TYPES else "json" if media in JSON_TYPES else ""
        encoding = content_encoding.strip().lower()
        self._inflate = zlib.decompressobj(47) if encoding in ("gzip", "x-gzip", "deflate") else None
        if encoding not in ("", "identity", "gzip", "x-gzip", "deflate"):
            self.kind = ""  # br, zstd...: relayed untouched, nothing learned
        self.max_bytes = max_bytes
        self.seen = 0
        self.overflowed = False
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._html = _AnchorParser(page_url) if self.kind == "html" else None
        self._json = bytearray()

    @property
    def active(self) -> bool:
        return bool(self.kind) and not self.overflowed

    def feed(self, data: bytes) -> None:
        if not self.active or not data:
            return
        try:
            if self._inflate is not None:
                data = self._inflate.decompress(data, self.max_bytes - self.seen + 1)
        except zlib.error:
            self.kind = ""
            return
        self.seen += len(data)
        if self.seen > self.max_bytes:
            self.overflowed = True
            return
        if self._html is not None:
            self._html.feed(self._decoder.decode(data))
        else:
            self._json += data

    def close(self) -> set[Target]:
        """Every target found (empty when the body was not a page or was too large)."""
        if not self.active:
            return set()
        if self._html is not None:
            self._html.feed(self._decoder.decode(b"", final=True))
            self._html.close()
            return self._html.found
        return self._json_targets()

    def _json_targets(self) -> set[Target]:
        try:
            page = json.loads(bytes(self._json).decode("utf-8", "replace"))
        except ValueError:
            return set()
        files = page.get("files") if isinstance(page, dict) else None
        found: set[Target] = set()
        for item in files if isinstance(files, list) else ():
            url = item.get("url") if isinstance(item, dict) else None
            if isinstance(url, str):
                target = target_of(self.page_url, url)
                if target is not None:
                    found.add(target)
        return found
