"""Moving bytes for the egress proxy: the CONNECT tunnel and a relayed HTTP body.

Every read and every drain has the idle timeout, so a peer that stops reading or writing
is dropped, never waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from .heads import Headers, header
from .links import LinkCollector
from .policy import Target

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, chunk: int, idle: float) -> None:
    """Copy ``src`` to ``dst`` until end of file, then half-close ``dst``."""
    while data := await asyncio.wait_for(src.read(chunk), idle):
        dst.write(data)
        await asyncio.wait_for(dst.drain(), idle)
    if dst.can_write_eof():
        with contextlib.suppress(OSError):
            dst.write_eof()


async def tunnel(client: Streams, upstream: Streams, chunk: int, idle: float) -> None:
    """Both directions until both end (or one fails); closes ``upstream``."""
    try:
        up = asyncio.ensure_future(pump(client[0], upstream[1], chunk, idle))
        down = asyncio.ensure_future(pump(upstream[0], client[1], chunk, idle))
        try:
            for future in asyncio.as_completed((up, down)):
                await future
        finally:
            up.cancel()
            down.cancel()
            await asyncio.gather(up, down, return_exceptions=True)
    finally:
        upstream[1].close()


async def relay_body(
    src: asyncio.StreamReader,
    dst: asyncio.StreamWriter,
    collector: LinkCollector | None,
    remaining: int | None,
    chunk: int,
    idle: float,
    learn: Callable[[Target], None],
) -> None:
    """Copy a response body, one chunk behind: the hosts ``collector`` found are given to
    ``learn`` before the last chunk is written, so the page's last bytes reach pip only
    after its links are admitted and pip's next request cannot race the learning."""
    held = b""
    while remaining != 0:
        data = await asyncio.wait_for(src.read(chunk), idle)
        if remaining is not None:
            data = data[:remaining]
            remaining -= len(data)
        if not data:
            break
        if collector is not None:
            collector.feed(data)
        if held:
            dst.write(held)
            await asyncio.wait_for(dst.drain(), idle)
        held = data
    if collector is not None:
        for found in collector.close():
            learn(found)
    dst.write(held)


def content_length(headers: Headers) -> int | None:
    """The body's length when the response states one plainly (else: read to the end)."""
    value = header(headers, "content-length")
    if value is None or header(headers, "transfer-encoding") is not None:
        return None
    return int(value) if value.isdigit() and len(value) < 16 else None
