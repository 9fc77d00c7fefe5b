"""Bounded, incremental capture of a pipe into the event loop."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable


class BoundedCapture(asyncio.Protocol):
    """Keeps at most ``limit`` bytes of a stream (its head, or with ``tail`` its end) and
    drains (and counts) the rest.

    Never holds more than ``limit`` bytes, so a flood costs the daemon no memory; the read
    side never stops, so the writer never blocks on a full pipe.
    """

    def __init__(self, limit: int, *, tail: bool = False) -> None:
        self.limit = limit
        self.tail = tail
        self._chunks: list[bytes] = []
        self._end = bytearray()
        self.kept = 0
        self.total = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sink: Callable[[bytes], None] | None = None

    def attach(self, sink: Callable[[bytes], None]) -> None:
        """Hand every chunk to ``sink`` as it arrives, before the cap (live output: the
        sink applies the same cap and notices what is dropped). What was kept before, if
        anything (a warm interpreter's start-up), goes first, so both hold the same text."""
        self._sink = sink
        if self.kept:
            sink(self.data())
        if self.truncated:
            sink(b"\0")  # stands for what was dropped: past the same cap, it is only counted

    def data_received(self, data: bytes) -> None:
        self.total += len(data)
        if self._sink is not None:
            self._sink(data)
        if self.tail:
            self._end += data
            if len(self._end) > self.limit:
                del self._end[: len(self._end) - self.limit]
            self.kept = len(self._end)
            return
        room = self.limit - self.kept
        if room > 0:
            piece = data[:room]
            self._chunks.append(piece)
            self.kept += len(piece)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)

    @property
    def truncated(self) -> bool:
        return self.total > self.kept

    def data(self) -> bytes:
        return bytes(self._end) if self.tail else b"".join(self._chunks)


async def capture_fd(
    fd: int, limit: int, *, tail: bool = False
) -> tuple[asyncio.ReadTransport, BoundedCapture]:
    """Start capturing the read end ``fd`` (ownership passes to the transport)."""
    loop = asyncio.get_running_loop()
    pipe = os.fdopen(fd, "rb", buffering=0)
    transport, protocol = await loop.connect_read_pipe(lambda: BoundedCapture(limit, tail=tail), pipe)
    return transport, protocol
