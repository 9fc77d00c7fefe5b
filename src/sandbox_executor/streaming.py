"""Live output of one execution: an append-only event log, and its Server-Sent Events form.

Events, each with an id that increases by one from 1: ``status`` (``{"status": "queued" |
"running"}``), ``stdout`` / ``stderr`` (``{"data": text}``, plus ``"truncated": true`` on
the event after which that stream's cap dropped bytes), then exactly one ``result`` (the
body of ``?wait=true``), then the log is closed.

Memory: every subscriber reads the one shared log through its own cursor, so a subscriber
costs an index, never a copy or a queue. The log keeps at most ``max_output_bytes`` of each
stream (the cap of the result's stdout/stderr); once the result is in, the output events
become slices of the result's own stdout/stderr strings, so a finished execution's log
holds almost nothing of its own. Appending never waits for anyone: a slow subscriber reads
at its own pace and never skips (everything kept stays readable until ``release``); one
that stops reading is cut off by the HTTP layer after a stall timeout (sse.py).
"""

from __future__ import annotations

import asyncio
import codecs
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import BinaryIO, Literal, Protocol

from pydantic_core import to_json

from .models import ExecutionResult

Stream = Literal["stdout", "stderr"]
EventKind = Literal["status", "stdout", "stderr", "result"]
# Output is published at once after a quiet interval, and otherwise gathered for at most
# this long...
FLUSH_INTERVAL_SECONDS = 0.1
# ... or as soon as this much of it is waiting (bounds one event's size).
FLUSH_BYTES = 16 * 1024


class OutputSink(Protocol):
    """Where a sandbox hands its output as it reads it (an :class:`EventLog`)."""

    def write(self, stream: Stream, data: bytes) -> None: ...


@dataclass(frozen=True, slots=True)
class Event:
    """One event as it goes on the wire: ``data`` is JSON text."""

    id: int
    kind: EventKind
    data: str


@dataclass(slots=True)
class _Output:
    """Output text, held by the log until the result owns the same text."""

    id: int
    stream: Stream
    text: str | None
    truncated: bool
    start: int = 0  # slice of the result's stream, once ``text`` is None
    end: int = 0


@dataclass(slots=True)
class _StreamState:
    decoder: codecs.IncrementalDecoder
    pending: bytearray
    kept: int = 0
    dropped: bool = False  # bytes beyond the cap arrived
    flagged: bool = False  # ...and an event said so


def _dumps(value: object) -> str:
    # pydantic's serializer: compact UTF-8 like json.dumps(ensure_ascii=False), 3x faster on
    # the 16 KiB strings of output events (every subscriber encodes every event).
    return to_json(value).decode("utf-8")


class EventLog:
    """The events of one execution; the producer side is called on the event loop."""

    def __init__(self, execution_id: str, max_output_bytes: int) -> None:
        self.execution_id = execution_id
        self.max_output_bytes = max_output_bytes
        self._entries: list[Event | _Output] = []
        self._result: ExecutionResult | None = None
        self._streams: dict[Stream, _StreamState] = {
            name: _StreamState(codecs.getincrementaldecoder("utf-8")("replace"), bytearray())
            for name in ("stdout", "stderr")
        }
        self._timer: asyncio.TimerHandle | None = None
        self._last_flush = float("-inf")
        self._changed = asyncio.Event()
        self.closed = False  # the result is in: nothing more will be appended
        self.released = False  # the execution was forgotten: the log is empty for good

    # ------------------------------------------------------------------ producer
    def status(self, status: Literal["queued", "running"]) -> None:
        if not self.closed:
            self._append(Event(self._next_id(), "status", _dumps({"status": status})))

    def write(self, stream: Stream, data: bytes) -> None:
        """Take a chunk of ``stream`` as read from the pipe; never blocks, never waits.

        The first ``max_output_bytes`` of each stream are kept, exactly the prefix the
        capture keeps for the result; what comes beyond only sets the truncation flag.
        """
        if self.closed or not data:
            return
        state = self._streams[stream]
        room = self.max_output_bytes - state.kept
        if len(data) > room:
            state.dropped = True
            data = data[: max(room, 0)]
        state.kept += len(data)
        state.pending += data
        if len(state.pending) >= FLUSH_BYTES or (state.dropped and not state.flagged):
            self._flush_stream(stream, final=False)
        elif state.pending and self._timer is None:
            # Output after a quiet interval goes out at once; what follows within the
            # interval is gathered into one event per stream.
            loop = asyncio.get_running_loop()
            wait = self._last_flush + FLUSH_INTERVAL_SECONDS - loop.time()
            if wait <= 0:
                self._flush()
            else:
                self._timer = loop.call_later(wait, self._flush)

    def finish(self, result: ExecutionResult) -> None:
        """Publish what is pending, then the result; the log is closed afterwards."""
        if self.closed:
            return
        for stream in self._streams:
            self._flush_stream(stream, final=True)
        self._cancel_timer()
        self._result = result
        self._share_text_with(result)
        self._append(Event(self._next_id(), "result", ""))
        self.closed = True

    def release(self) -> None:
        """Forget every event (the execution record was pruned); subscribers end."""
        self._cancel_timer()
        self._entries = []
        self._result = None
        self.closed = self.released = True
        self._wake()

    # ------------------------------------------------------------------ consumer
    @property
    def last_id(self) -> int:
        return len(self._entries)

    def truncated(self, stream: Stream) -> bool:
        return self._streams[stream].dropped

    def events_after(self, after: int) -> list[Event]:
        """The events with an id greater than ``after`` that exist now."""
        return [self._materialize(n) for n in range(max(after, 0), len(self._entries))]

    async def follow(self, after: int = 0, idle_timeout: float | None = None) -> AsyncIterator[Event | None]:
        """Events after ``after``: those kept, then live ones, until the result.

        Yields None when ``idle_timeout`` seconds pass without an event (for keep-alives).
        Ends after the result, or at once when the log is released.
        """
        cursor = max(after, 0)
        while not self.released:
            if cursor < len(self._entries):
                event = self._materialize(cursor)
                cursor += 1
                yield event
                continue
            if self.closed:
                return
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), idle_timeout)
            except TimeoutError:
                yield None

    # ------------------------------------------------------------------ internals
    def _next_id(self) -> int:
        return len(self._entries) + 1

    def _append(self, entry: Event | _Output) -> None:
        self._entries.append(entry)
        self._wake()

    def _wake(self) -> None:
        # Waiters hold the old Event; a fresh one makes the next wait block again.
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _flush(self) -> None:
        self._timer = None
        self._last_flush = asyncio.get_running_loop().time()
        for stream in self._streams:
            self._flush_stream(stream, final=False)

    def _flush_stream(self, stream: Stream, *, final: bool) -> None:
        state = self._streams[stream]
        while True:
            piece = bytes(state.pending[:FLUSH_BYTES])
            del state.pending[:FLUSH_BYTES]
            last = not state.pending
            # A multi-byte character split across chunks waits in the decoder for its end.
            text = state.decoder.decode(piece, final and last)
            flag = last and state.dropped and not state.flagged
            if text or flag:
                state.flagged = state.flagged or flag
                self._append(_Output(self._next_id(), stream, text, flag))
            if last:
                return

    def _share_text_with(self, result: ExecutionResult) -> None:
        # The result's stdout/stderr decode the same kept bytes in one go, so they begin
        # with the concatenated event texts (stderr may carry a timeout note after them).
        # Each event then becomes a slice of that text: one copy of the output, not two.
        texts = {"stdout": result.stdout, "stderr": result.stderr}
        for stream, full in texts.items():
            mine = [e for e in self._entries if isinstance(e, _Output) and e.stream == stream]
            spans: list[tuple[int, int]] = []
            pos = 0
            for out in mine:
                if out.text is None or not full.startswith(out.text, pos):
                    break  # not the same text (never expected): the events keep their own
                spans.append((pos, pos + len(out.text)))
                pos += len(out.text)
            else:
                for out, (start, end) in zip(mine, spans, strict=True):
                    out.text, out.start, out.end = None, start, end

    def _materialize(self, index: int) -> Event:
        entry = self._entries[index]
        if isinstance(entry, Event):
            if entry.kind == "result":
                assert self._result is not None
                body = {"execution_id": self.execution_id, **self._result.model_dump(mode="json")}
                return Event(entry.id, "result", _dumps(body))
            return entry
        text = entry.text
        if text is None:
            assert self._result is not None
            source = self._result.stdout if entry.stream == "stdout" else self._result.stderr
            text = source[entry.start : entry.end]
        payload: dict[str, object] = {"data": text}
        if entry.truncated:
            payload["truncated"] = True
        return Event(entry.id, entry.stream, _dumps(payload))


class EventLogs:
    """The logs of the executions the service keeps; retention follows its records.

    The service opens a log when it accepts an execution and releases it where it deletes
    the record (``discard``), or after pruning passes the ids it kept (``retain``).
    """

    def __init__(self, max_output_bytes: int) -> None:
        self.max_output_bytes = max_output_bytes
        self._logs: dict[str, EventLog] = {}

    def open(self, execution_id: str) -> EventLog:
        """The log of ``execution_id``, created (with its ``queued`` event) if new."""
        log = self._logs.get(execution_id)
        if log is None:
            log = self._logs[execution_id] = EventLog(execution_id, self.max_output_bytes)
            log.status("queued")
        return log

    def get(self, execution_id: str) -> EventLog | None:
        return self._logs.get(execution_id)

    def discard(self, execution_id: str) -> None:
        """Release one log (where the service deletes the record: O(1))."""
        log = self._logs.pop(execution_id, None)
        if log is not None:
            log.release()

    def retain(self, kept_ids: set[str] | dict[str, object]) -> None:
        """Release every log whose id is not in ``kept_ids`` (after a prune: O(logs))."""
        for execution_id in [k for k in self._logs if k not in kept_ids]:
            self.discard(execution_id)

    def __len__(self) -> int:
        return len(self._logs)


async def relay(log: EventLog, stdout: BinaryIO, stderr: BinaryIO) -> None:
    """Copy the program's output to ``stdout``/``stderr`` as it arrives, until the result
    (``sandbox-executor run --stream``; the caller prints the result itself).

    Writes happen in a worker thread: a terminal or pipe that stops reading holds this
    copy back, never the event loop that captures the run and enforces its deadline.
    """
    async for event in log.follow():
        if event is not None and event.kind in ("stdout", "stderr"):
            target = stdout if event.kind == "stdout" else stderr
            await asyncio.to_thread(_write_flush, target, json.loads(event.data)["data"].encode("utf-8"))


def _write_flush(target: BinaryIO, data: bytes) -> None:
    target.write(data)
    target.flush()
