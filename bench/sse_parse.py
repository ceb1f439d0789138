"""SSE parsing per network read: greengate's httpx-sse parser against the two alternatives.

- httpx_sse_stream: `backends.sse.iter_sse_batches`, one httpx-sse `EventSource` per stream,
  driven a network read at a time (what the members use);
- httpx_sse_per_read: a new `EventSource` over an in-memory `httpx.Response` for each read's
  complete events (the plain way to keep read boundaries with httpx-sse's public API);
- hand_written: the byte-level splitter greengate used before (kept here only as the anchor).

Same streams (OpenAI chat chunks, 1 to 3 events per read, a CRLF stream, [DONE] at the end),
candidates interleaved round by round, microseconds of CPU per network read (process time),
ratios to the hand-written anchor.

    .venv/bin/python bench/sse_parse.py --out bench/results/sse_parse.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
from httpx_sse import EventSource

from backends.sse import iter_sse_batches

Parser = Callable[[AsyncIterator[bytes]], AsyncIterator[list[bytes]]]


async def hand_written(chunks: AsyncIterator[bytes]) -> AsyncIterator[list[bytes]]:
    """The splitter backends/sse.py held before httpx-sse (bytes only, no text decoding)."""
    buf = b""
    async for chunk in chunks:
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buf += chunk
        batch: list[bytes] = []
        while (end := buf.find(b"\n\n")) >= 0:
            event, buf = buf[:end], buf[end + 2 :]
            parts = [ln[5:].removeprefix(b" ") for ln in event.split(b"\n")
                     if ln.startswith(b"data:")]
            if not parts:
                continue
            data = b"\n".join(parts)
            if data == b"[DONE]":
                if batch:
                    yield batch
                return
            batch.append(data)
        if batch:
            yield batch


async def httpx_sse_per_read(chunks: AsyncIterator[bytes]) -> AsyncIterator[list[bytes]]:
    buf = b""
    headers = httpx.Headers({"content-type": "text/event-stream"})
    async for chunk in chunks:
        buf += chunk.replace(b"\r\n", b"\n") if b"\r" in chunk else chunk
        end = buf.rfind(b"\n\n")
        if end < 0:
            continue
        block, buf = buf[: end + 2], buf[end + 2 :]
        events = EventSource(httpx.Response(200, headers=headers, content=block)).iter_sse()
        batch = [e.data.encode() for e in events if e.data]
        if b"[DONE]" in batch:
            batch = batch[: batch.index(b"[DONE]")]
            if batch:
                yield batch
            return
        if batch:
            yield batch


CANDIDATES: dict[str, Parser] = {
    "httpx_sse_stream": iter_sse_batches,
    "httpx_sse_per_read": httpx_sse_per_read,
    "hand_written": hand_written,
}


def make_streams(reads: int) -> list[list[bytes]]:
    """Three streams of `reads` network reads each, ending with [DONE]."""
    def event(i: int) -> bytes:
        chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                 "model": "m", "choices": [{"index": 0, "delta": {"content": f"tok{i} "},
                                            "finish_reason": None}]}
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    one = [event(i) for i in range(reads)]
    three = [event(i) + event(i + 1) + event(i + 2) for i in range(reads)]
    crlf = [e.replace(b"\n", b"\r\n") for e in one]
    done = [b"data: [DONE]\n\n"]
    return [one + done, three + done, crlf + done]


async def run_once(parser: Parser, streams: list[list[bytes]]) -> tuple[float, int]:
    async def feed(reads: list[bytes]) -> AsyncIterator[bytes]:
        for r in reads:
            yield r

    payloads = 0
    t0 = time.process_time()
    for reads in streams:
        async for batch in parser(feed(reads)):
            payloads += len(batch)
    return time.process_time() - t0, payloads


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    streams = make_streams(args.reads)
    n_reads = sum(len(s) for s in streams)
    per_read: dict[str, list[float]] = {name: [] for name in CANDIDATES}
    counts: dict[str, int] = {}
    for name, parser in CANDIDATES.items():  # warm-up, and every candidate agrees
        counts[name] = (await run_once(parser, streams))[1]
    if len(set(counts.values())) != 1:
        raise SystemExit(f"candidates disagree on the payload count: {counts}")
    for _ in range(args.rounds):
        for name, parser in CANDIDATES.items():
            seconds, _ = await run_once(parser, streams)
            per_read[name].append(seconds / n_reads * 1e6)
    med = {name: statistics.median(v) for name, v in per_read.items()}
    return {
        "reads_per_round": n_reads, "payloads_per_round": counts["hand_written"],
        "rounds": args.rounds,
        "us_per_read_median": {k: round(v, 2) for k, v in med.items()},
        "ratio_to_hand_written": {k: round(v / med["hand_written"], 2) for k, v in med.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reads", type=int, default=300, help="network reads per stream")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    result = asyncio.run(main_async(args))
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
