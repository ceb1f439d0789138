"""backends/sse.py: httpx-sse's parsing, one batch per network read, and a clean stop."""

from __future__ import annotations

import gc
import warnings
from collections.abc import AsyncIterator

import pytest

from backends.sse import iter_sse_batches, iter_sse_data


async def _feed(reads: list[bytes]) -> AsyncIterator[bytes]:
    for r in reads:
        yield r


async def _batches(reads: list[bytes]) -> list[list[bytes]]:
    return [b async for b in iter_sse_batches(_feed(reads))]


async def test_events_split_across_reads_come_out_with_the_read_that_completes_them() -> None:
    reads = [b"data: a\n\ndata: b\n\nda", b"ta: c\n\n", b": comment\n\n",
             b"data: d\r\n\r\ndata: [DONE]\n\ndata: after\n\n"]
    assert await _batches(reads) == [[b"a", b"b"], [b"c"], [b"d"]]
    assert [p async for p in iter_sse_data(_feed(reads))] == [b"a", b"b", b"c", b"d"]


async def test_a_crlf_split_between_two_reads_is_one_line_end() -> None:
    # "\r" ends read 1 and "\n" starts read 2: one line end, not an empty line (an event end).
    reads = [b"data: a\r", b"\ndata: b\r\n\r\n"]
    assert await _batches(reads) == [[b"a\nb"]]


async def test_multiline_data_utf8_split_and_events_without_data() -> None:
    reads = [b"data: x\ndata: y\n\nevent: ping\n\n", b"data: \xc3", b"\xa9\n\nretry: 5\n\n"]
    assert await _batches(reads) == [[b"x\ny"], ["é".encode()]]


async def test_an_unterminated_last_event_is_dropped_as_the_spec_says() -> None:
    assert await _batches([b"data: a\n\n", b"data: cut"]) == [[b"a"]]
    assert await _batches([]) == []


async def test_a_stream_left_mid_way_unwinds_without_warnings() -> None:
    gen = iter_sse_batches(_feed([b"data: 1\n\n", b"data: 2\n\n", b"data: 3\n\n"]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert await gen.__anext__() == [b"1"]
        await gen.aclose()
        gen2 = iter_sse_batches(_feed([b"data: 1\n\n", b"data: 2\n\n"]))
        assert await gen2.__anext__() == [b"1"]
        del gen2
        gc.collect()


async def test_the_upstream_error_mid_stream_reaches_the_consumer() -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b"data: 1\n\n"
        raise ConnectionResetError("cut")

    gen = iter_sse_batches(broken())
    assert await gen.__anext__() == [b"1"]
    with pytest.raises(ConnectionResetError):
        await gen.__anext__()
