"""Server-sent-event payloads from an upstream's byte stream, parsed by `httpx-sse`.

Lines, fields and events (`data:` lines joined by newlines, comments, CR/CRLF/LF line ends,
a line end split across two network reads, `[DONE]`) are httpx-sse's `EventSource`: one per
stream, over an `httpx.Response` whose body is the member's network reads. What stays ours is
the read boundary: the member relays one write per network read (`Member.stream_batches`), and
`EventSource` pulls from its response with no such boundaries. So the response's body stream,
when it has handed over the current read and needs the next one, suspends the whole parser with
a marker (`_Starved`) instead of waiting; `_Parser.feed` drives the parser by hand (`send`) and
takes that marker to mean "every event of this read is out". Nothing in httpx's body chain awaits
anything else (checked on each step: any other awaitable is a `RuntimeError`, never a hang), and
the parser never runs on the event loop's scheduler, so no task or queue per read is needed.

Why not one `EventSource` per read's complete events: each needs a new `httpx.Response`, 22 us of
CPU a read against 5 us here (the hand-written byte splitter this replaced: 1.9 us;
`bench/sse_parse.py`, figures in the README). httpx-sse's incremental decoders would do it
directly but are private (`httpx_sse._decoders`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Generator
from typing import Any

import httpx
from httpx_sse import EventSource, ServerSentEvent

DONE = "[DONE]"
_SSE_HEADERS = {"content-type": "text/event-stream"}


class _Starved:
    """Awaited by the body stream when it needs the next network read: suspends the parser
    back to `_Parser`'s `send` (the marker is the value `send` returns)."""

    def __await__(self) -> Generator[Any, None, None]:
        yield self


_STARVED = _Starved()


class _Abandoned(Exception):
    """Thrown into a parser waiting for a read, to unwind it when the stream stops early."""


class _Reads(httpx.AsyncByteStream):
    """The response body: the current network read, then a suspension until the next."""

    def __init__(self) -> None:
        self.chunk: bytes | None = None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            await _STARVED
            chunk, self.chunk = self.chunk, None
            if chunk is None:  # only after end(): the upstream closed the stream
                return
            yield chunk


class _Parser:
    """One stream's `EventSource`, driven a network read at a time."""

    def __init__(self) -> None:
        self._reads = _Reads()
        response = httpx.Response(200, headers=_SSE_HEADERS, stream=self._reads)
        self._events = EventSource(response).aiter_sse()
        self._next: Any = None
        self.done = False  # [DONE] seen or the stream ended
        self._step(None)  # run the parser up to its first wait for a read

    def _step(self, chunk: bytes | None) -> list[bytes]:
        """Hand `chunk` (None: the end) to the parser; the data of the events it completes."""
        self._reads.chunk = chunk
        out: list[bytes] = []
        while True:
            if self._next is None:
                self._next = self._events.__anext__()
            try:
                marker = self._next.send(None)
            except StopIteration as stop:
                self._next = None
                event: ServerSentEvent = stop.value
                if event.data == DONE:
                    self.close()
                    return out
                if event.data:  # events without data (a bare `event:`) carry nothing to relay
                    out.append(event.data.encode())
                continue
            except StopAsyncIteration:
                self._next = None
                self.done = True
                return out
            if marker is not _STARVED:
                raise RuntimeError(f"the SSE parser awaited {marker!r}, not the next read")
            return out

    def feed(self, chunk: bytes) -> list[bytes]:
        """The data of every event that this network read completes (maybe none)."""
        return [] if self.done or not chunk else self._step(chunk)

    def end(self) -> list[bytes]:
        """The upstream closed the stream: an event with no blank line after it is dropped, as
        the SSE spec says."""
        return [] if self.done else self._step(None)

    def close(self) -> None:
        """Stop the parser (after [DONE], or when the consumer goes away mid-stream)."""
        self.done = True
        if self._next is not None:  # suspended waiting for a read: unwind the body chain
            pending, self._next = self._next, None
            # not GeneratorExit: a delegating frame would only mark the inner one closed
            with contextlib.suppress(_Abandoned, StopIteration, StopAsyncIteration):
                pending.throw(_Abandoned())
        closing = self._events.aclose()
        try:
            closing.send(None)
        except (StopIteration, StopAsyncIteration):
            pass
        else:
            closing.close()


async def iter_sse_batches(chunks: AsyncIterator[bytes]) -> AsyncIterator[list[bytes]]:
    """The payloads of the events each network chunk completes, together (non-empty lists);
    stops at `[DONE]`. Bytes after a chunk's last complete event wait for the next chunk."""
    parser = _Parser()
    try:
        async for chunk in chunks:
            batch = parser.feed(chunk)
            if batch:
                yield batch
            if parser.done:
                return
        batch = parser.end()
        if batch:
            yield batch
    finally:
        parser.close()


async def iter_sse_data(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Each event's data, one at a time (multi-line data joined by newlines); stops at [DONE]."""
    async for batch in iter_sse_batches(chunks):
        for data in batch:
            yield data
