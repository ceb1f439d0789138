"""The text an answer generated, streamed or not: for counting tokens ourselves when the
upstream sends no usage, and for a team's request log."""

from __future__ import annotations

import orjson


def completion_text(endpoint: str, data: dict) -> str:
    """The generated text of a (non-streamed) response, for counting tokens ourselves."""
    parts: list[str] = []
    for choice in data.get("choices") or []:
        if endpoint == "completions":
            parts.append(str(choice.get("text") or ""))
            continue
        msg = choice.get("message") or choice.get("delta") or {}
        parts.append(str(msg.get("content") or ""))
        for tc in msg.get("tool_calls") or []:
            fn = tc.get("function") or {}
            parts.append(str(fn.get("name") or "") + str(fn.get("arguments") or ""))
    return "".join(parts)


def streamed_text(endpoint: str, payloads: list[bytes]) -> tuple[str, dict | None]:
    """The text generated so far in a stream, and its last chunk (for a usage chunk's ids)."""
    parts: list[str] = []
    last: dict | None = None
    for p in payloads:
        try:
            d = orjson.loads(p)
        except orjson.JSONDecodeError:
            continue
        if isinstance(d, dict):
            last = d
            parts.append(completion_text(endpoint, d))
    return "".join(parts), last
