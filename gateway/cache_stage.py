"""The semantic cache on the request path: which requests may use it, and how a hit is
answered (the same JSON or chunk format as a live answer) and logged."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import orjson

from routing import CachePolicy

# A hit costs a little CPU on this machine, not a model: charged at a core's share of a
# server's power, an estimate and labelled so.
CPU_WATTS = 15.0
ENERGY_SOURCE = "estimated:cache-cpu-time"


def eligible(policy: CachePolicy, body: dict, flags: set[str]) -> bool:
    """Only deterministic-enough requests, never personal data (a hit would hand one
    request's answer, with its restored values, to another)."""
    if not policy.enabled or "pii" in flags or (body.get("n") or 1) != 1:
        return False
    if body.get("tools") and not policy.allow_tools:
        return False
    temperature = body.get("temperature")
    return (1.0 if temperature is None else float(temperature)) <= policy.max_temperature


def hit_body(cached: dict, rid: str) -> dict:
    body = dict(cached)
    body["id"] = f"chatcmpl-{rid}"
    body["created"] = int(time.time())
    return body


def hit_chunks(body: dict, include_usage: bool) -> Iterator[bytes]:
    """A cached answer as the SSE chunks a live stream would have sent."""
    base = {"id": body["id"], "object": "chat.completion.chunk", "created": body["created"],
            "model": body.get("model")}

    def sse(choices: list, **extra: Any) -> bytes:
        return b"data: " + orjson.dumps({**base, "choices": choices, **extra}) + b"\n\n"

    for choice in body.get("choices") or []:
        i = choice.get("index", 0)
        msg = choice.get("message") or {}
        yield sse([{"index": i, "delta": {"role": "assistant", "content": ""},
                    "finish_reason": None}])
        words = (msg.get("content") or "").split(" ")
        for n, w in enumerate(words):
            yield sse([{"index": i, "delta": {"content": w if n == 0 else " " + w},
                        "finish_reason": None}])
        yield sse([{"index": i, "delta": {}, "finish_reason": choice.get("finish_reason")
                    or "stop"}])
    if include_usage and body.get("usage"):
        yield sse([], usage=body["usage"])
    yield b"data: [DONE]\n\n"


def body_from_stream(payloads: list[bytes], usage: dict | None) -> dict | None:
    """Rebuild the chat.completion of a finished stream, to cache it; None when it carried
    tool calls or anything but one text choice."""
    text: list[str] = []
    first: dict | None = None
    finish = None
    for p in payloads:
        try:
            d = orjson.loads(p)
        except orjson.JSONDecodeError:
            return None
        first = first or d
        for c in d.get("choices") or []:
            if c.get("index", 0) != 0:
                return None
            delta = c.get("delta") or {}
            if delta.get("tool_calls"):
                return None
            text.append(delta.get("content") or "")
            finish = c.get("finish_reason") or finish
    if first is None:
        return None
    return {"id": first.get("id"), "object": "chat.completion", "created": first.get("created"),
            "model": first.get("model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(text)},
                         "finish_reason": finish or "stop"}],
            "usage": usage}
