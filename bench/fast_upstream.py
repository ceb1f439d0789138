"""A fast fake OpenAI provider for the proxy benchmarks: a bare asyncio protocol (uvloop and
httptools when installed) answering /v1/chat/completions, plain or streamed, with a fixed
reply and usage. `backends/mock_upstream.py` is a Starlette app built for steering tests; at
64 concurrent requests on this machine it is itself the bottleneck, which would hide what a
proxy in front of it costs. Not a model: it echoes nothing and decides nothing.

    python bench/fast_upstream.py --port 9100
"""

from __future__ import annotations

import argparse
import asyncio
import time

import orjson

try:
    import httptools
except ImportError:  # pragma: no cover - httptools comes with uvicorn[standard]
    httptools = None

WORDS = ["Hello", " from", " the", " fast", " fake", " provider", ",", " benchmark", "."]
USAGE = {"prompt_tokens": 12, "completion_tokens": len(WORDS), "total_tokens": 12 + len(WORDS)}


def plain_reply(model: str) -> bytes:
    return orjson.dumps({
        "id": "chatcmpl-bench", "object": "chat.completion", "created": int(time.time()),
        "model": model, "choices": [{"index": 0, "finish_reason": "stop", "message": {
            "role": "assistant", "content": "".join(WORDS)}}], "usage": USAGE})


def stream_reply(model: str, include_usage: bool) -> list[bytes]:
    created = int(time.time())

    def chunk(delta: dict, finish: str | None = None) -> bytes:
        return b"data: " + orjson.dumps({
            "id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": created,
            "model": model, "choices": [{"index": 0, "delta": delta,
                                         "finish_reason": finish}]}) + b"\n\n"

    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": w}) for w in WORDS]
    events.append(chunk({}, "stop"))
    if include_usage:
        events.append(b"data: " + orjson.dumps({
            "id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": created,
            "model": model, "choices": [], "usage": USAGE}) + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    return events


class Handler(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    # httptools callbacks
    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_message_begin(self) -> None:
        self.body = []

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        assert self.transport is not None
        if self.url.endswith(b"/models"):
            self._send(b"200 OK", b"application/json",
                       b'{"object":"list","data":[{"id":"fake","object":"model"}]}')
            return
        try:
            req = orjson.loads(b"".join(self.body))
        except orjson.JSONDecodeError:
            self._send(b"400 Bad Request", b"application/json",
                       b'{"error":{"message":"bad json","type":"invalid_request_error"}}')
            return
        model = str(req.get("model") or "fake")
        if not req.get("stream"):
            self._send(b"200 OK", b"application/json", plain_reply(model))
            return
        include = bool((req.get("stream_options") or {}).get("include_usage"))
        out = [b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
               b"transfer-encoding: chunked\r\n\r\n"]
        for event in stream_reply(model, include):
            out.append(b"%x\r\n%s\r\n" % (len(event), event))
        out.append(b"0\r\n\r\n")
        self.transport.write(b"".join(out))

    def _send(self, status: bytes, ctype: bytes, body: bytes) -> None:
        assert self.transport is not None
        self.transport.write(b"HTTP/1.1 " + status + b"\r\ncontent-type: " + ctype +
                             b"\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" +
                             body)


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Handler, host, port, backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9100)
    args = p.parse_args()
    if httptools is None:
        raise SystemExit("fast_upstream.py needs httptools (pip install httptools)")
    try:
        import uvloop

        uvloop.run(serve(args.host, args.port))
    except ImportError:
        asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
