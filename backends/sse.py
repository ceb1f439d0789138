"""Splitting a server-sent-event byte stream into data payloads."""

from __future__ import annotations

from collections.abc import AsyncIterator


async def iter_sse_data(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Yield each event's data (multi-line data joined by newlines); stop at [DONE]."""
    buf = b""
    async for chunk in chunks:
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buf += chunk
        while True:
            end = buf.find(b"\n\n")
            if end < 0:
                break
            event, buf = buf[:end], buf[end + 2 :]
            data = _event_data(event)
            if data is None:
                continue
            if data == b"[DONE]":
                return
            yield data
    if buf.strip():
        data = _event_data(buf)
        if data is not None and data != b"[DONE]":
            yield data


async def iter_sse_batches(chunks: AsyncIterator[bytes]) -> AsyncIterator[list[bytes]]:
    """Like `iter_sse_data`, but the payloads of each network chunk together (non-empty)."""
    buf = b""
    async for chunk in chunks:
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buf += chunk
        batch: list[bytes] = []
        while True:
            end = buf.find(b"\n\n")
            if end < 0:
                break
            event, buf = buf[:end], buf[end + 2 :]
            data = _event_data(event)
            if data is None:
                continue
            if data == b"[DONE]":
                if batch:
                    yield batch
                return
            batch.append(data)
        if batch:
            yield batch
    if buf.strip():
        data = _event_data(buf)
        if data is not None and data != b"[DONE]":
            yield [data]


def _event_data(event: bytes) -> bytes | None:
    if event.startswith(b"data: ") and b"\n" not in event:
        return event[6:]  # the common case: one data line
    parts = []
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            parts.append(line[5:].removeprefix(b" "))
    return b"\n".join(parts) if parts else None
