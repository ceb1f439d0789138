"""A small OpenAI-protocol server that echoes: for demos (`greengate mock-upstream`) and as the
fake provider in tests, which steer it through `MockBehaviour`. It is not a model."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import dataclass, field

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route


@dataclass
class MockBehaviour:
    latency_s: float = 0.0  # before the response starts
    latency_jitter_s: float = 0.0  # plus a uniform random share of this
    chunk_delay_s: float = 0.0
    fail_statuses: list[int] = field(default_factory=list)  # consumed one per request
    retry_after: str | None = None
    omit_usage: bool = False
    disconnect_after_chunks: int | None = None
    reply: str | None = None
    requests: list[dict] = field(default_factory=list)

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]


def _words(text: str) -> int:
    return len(text.split())


def _last_user_text(messages: list) -> str:
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "user":
            c = m.get("content")
            if isinstance(c, list):
                return " ".join(p.get("text", "") for p in c if isinstance(p, dict))
            return str(c or "")
    return ""


def _prompt_words(body: dict) -> int:
    if "messages" in body:
        return sum(_words(str(m.get("content") or "")) for m in body["messages"])
    prompt = body.get("prompt", "")
    return _words(prompt if isinstance(prompt, str) else " ".join(map(str, prompt)))


def create_app(behaviour: MockBehaviour | None = None) -> Starlette:
    b = behaviour or MockBehaviour()

    async def _prelude(request: Request) -> tuple[dict, Response | None]:
        raw = await request.body()
        body = orjson.loads(raw)
        b.requests.append(
            {"path": request.url.path, "body": body, "auth": request.headers.get("authorization")}
        )
        if len(b.requests) > 10_000:  # a long demo or benchmark must not grow without bound
            del b.requests[:5_000]
        # Decide the outcome on arrival: a slow request must not take a later request's failure.
        status = b.fail_statuses.pop(0) if b.fail_statuses else None
        if b.latency_s or b.latency_jitter_s:
            await asyncio.sleep(b.latency_s + random.random() * b.latency_jitter_s)
        if status is not None:
            headers = {"retry-after": b.retry_after} if b.retry_after else {}
            err = {"error": {"message": f"mock failure {status}", "type": "server_error",
                             "param": None, "code": None}}
            return body, Response(orjson.dumps(err), status, headers=headers,
                                  media_type="application/json")
        return body, None

    def _reply(body: dict) -> str:
        if b.reply is not None:
            return b.reply
        text = _last_user_text(body.get("messages", [])) if "messages" in body else str(
            body.get("prompt", "")
        )
        return f"You said: {text}"

    def _tool_call(body: dict) -> dict | None:
        tools = body.get("tools")
        if not tools or body.get("tool_choice") == "none":
            return None
        fn = tools[0]["function"]["name"]
        return {"id": "call_" + uuid.uuid4().hex[:12], "type": "function",
                "function": {"name": fn, "arguments": '{"city": "Paris", "unit": "celsius"}'}}

    async def chat(request: Request) -> Response:
        body, failure = await _prelude(request)
        if failure is not None:
            return failure
        model = body.get("model", "mock")
        rid = "chatcmpl-" + uuid.uuid4().hex[:16]
        created = int(time.time())
        text = _reply(body)
        tool_call = _tool_call(body)
        usage = {"prompt_tokens": _prompt_words(body),
                 "completion_tokens": _words(text) + (6 if tool_call else 0)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]

        if not body.get("stream"):
            message: dict = {"role": "assistant", "content": None if tool_call else text}
            if tool_call:
                message["tool_calls"] = [tool_call]
            out = {"id": rid, "object": "chat.completion", "created": created, "model": model,
                   "choices": [{"index": 0, "message": message,
                                "finish_reason": "tool_calls" if tool_call else "stop"}]}
            if not b.omit_usage:
                out["usage"] = usage
            return Response(orjson.dumps(out), media_type="application/json")

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def chunk(delta: dict, finish: str | None = None) -> bytes:
            c = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            return b"data: " + orjson.dumps(c) + b"\n\n"

        async def events():  # type: ignore[no-untyped-def]
            parts: list[bytes] = [chunk({"role": "assistant", "content": ""})]
            if tool_call:
                args = tool_call["function"]["arguments"]
                parts.append(chunk({"tool_calls": [{"index": 0, "id": tool_call["id"],
                                   "type": "function", "function": {
                                       "name": tool_call["function"]["name"], "arguments": ""}}]}))
                for i in range(0, len(args), 8):
                    parts.append(chunk({"tool_calls": [{"index": 0, "function": {
                        "arguments": args[i:i + 8]}}]}))
                parts.append(chunk({}, "tool_calls"))
            else:
                words = text.split(" ")
                for i, w in enumerate(words):
                    parts.append(chunk({"content": w if i == 0 else " " + w}))
                parts.append(chunk({}, "stop"))
            for sent, p in enumerate(parts):
                if b.disconnect_after_chunks is not None and sent >= b.disconnect_after_chunks:
                    raise ConnectionAbortedError("mock: dropping the connection mid-stream")
                if b.chunk_delay_s:
                    await asyncio.sleep(b.chunk_delay_s)
                yield p
            if include_usage and not b.omit_usage:
                u = {"id": rid, "object": "chat.completion.chunk", "created": created,
                     "model": model, "choices": [], "usage": usage}
                yield b"data: " + orjson.dumps(u) + b"\n\n"
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def completions(request: Request) -> Response:
        body, failure = await _prelude(request)
        if failure is not None:
            return failure
        text = _reply(body)
        usage = {"prompt_tokens": _prompt_words(body), "completion_tokens": _words(text)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        rid = "cmpl-" + uuid.uuid4().hex[:16]
        base = {"id": rid, "object": "text_completion", "created": int(time.time()),
                "model": body.get("model", "mock")}
        if not body.get("stream"):
            out = {**base, "choices": [{"index": 0, "text": text, "logprobs": None,
                                        "finish_reason": "stop"}]}
            if not b.omit_usage:
                out["usage"] = usage
            return Response(orjson.dumps(out), media_type="application/json")
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        async def events():  # type: ignore[no-untyped-def]
            for i, w in enumerate(text.split(" ")):
                c = {**base, "choices": [{"index": 0, "text": w if i == 0 else " " + w,
                                          "logprobs": None, "finish_reason": None}]}
                yield b"data: " + orjson.dumps(c) + b"\n\n"
            c = {**base, "choices": [{"index": 0, "text": "", "logprobs": None,
                                      "finish_reason": "stop"}]}
            yield b"data: " + orjson.dumps(c) + b"\n\n"
            if include_usage and not b.omit_usage:
                yield b"data: " + orjson.dumps({**base, "choices": [], "usage": usage}) + b"\n\n"
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def embeddings(request: Request) -> Response:
        body, failure = await _prelude(request)
        if failure is not None:
            return failure
        inputs = body.get("input")
        items = [inputs] if isinstance(inputs, str) else list(inputs or [])
        data = []
        for i, item in enumerate(items):
            seed = sum(str(item).encode()) % 97
            data.append({"object": "embedding", "index": i,
                         "embedding": [((seed + j) % 13) / 13.0 for j in range(8)]})
        tokens = sum(_words(str(x)) for x in items)
        out = {"object": "list", "data": data, "model": body.get("model", "mock"),
               "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
        if b.omit_usage:
            out.pop("usage")
        return Response(orjson.dumps(out), media_type="application/json")

    async def models(_: Request) -> Response:
        return Response(orjson.dumps({"object": "list", "data": [
            {"id": "mock", "object": "model", "created": 0, "owned_by": "mock"}]}),
            media_type="application/json")

    return Starlette(routes=[
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
    ])
