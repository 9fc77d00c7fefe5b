"""A Server-Sent Events parser written from the spec (WHATWG HTML, "event stream
interpretation"), independent of the encoder under test."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_LINE = re.compile(rb"\r\n|\r|\n")


@dataclass
class ParsedEvent:
    id: str | None
    event: str
    data: str


@dataclass
class SSEParser:
    """Feed bytes as they arrive; collects events and counts comments."""

    events: list[ParsedEvent] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    _buffer: bytes = b""
    _data: list[str] = field(default_factory=list)
    _event: str = ""
    _id: str | None = None
    _has_id: bool = False

    def feed(self, chunk: bytes) -> list[ParsedEvent]:
        self._buffer += chunk
        new: list[ParsedEvent] = []
        while True:
            match = _LINE.search(self._buffer)
            # A lone CR at the very end may be the first half of CRLF: wait for more.
            if match is None or (match.group() == b"\r" and match.end() == len(self._buffer)):
                return new
            line = self._buffer[: match.start()].decode("utf-8")
            self._buffer = self._buffer[match.end() :]
            event = self._line(line)
            if event is not None:
                self.events.append(event)
                new.append(event)

    def _line(self, line: str) -> ParsedEvent | None:
        if line == "":
            if not self._data and not self._event:
                self._has_id = False
                return None
            event = ParsedEvent(
                self._id if self._has_id else None, self._event or "message", "\n".join(self._data)
            )
            self._data, self._event, self._has_id = [], "", False
            return event
        if line.startswith(":"):
            self.comments.append(line[1:].removeprefix(" "))
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\x00" not in value:
            self._id, self._has_id = value, True
        return None
