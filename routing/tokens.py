"""Counting tokens ourselves, for upstreams that report no usage (and for routing features).

In routing/ so that both routing (features) and gateway (accounting) use it without routing
reaching up into gateway/."""

from __future__ import annotations

import importlib.util
import os
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import tiktoken


def _bundled_cache_dir() -> str | None:
    # litellm ships the cl100k/o200k BPE files; pointing tiktoken there avoids a download.
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(next(iter(spec.submodule_search_locations))) / "litellm_core_utils" / "tokenizers"
    return str(d) if d.is_dir() else None


@cache
def encoding(model: str = "") -> tiktoken.Encoding:
    if "TIKTOKEN_CACHE_DIR" not in os.environ and (d := _bundled_cache_dir()):
        os.environ["TIKTOKEN_CACHE_DIR"] = d
    name = "o200k_base" if any(p in model for p in ("gpt-4o", "gpt-4.1", "o1", "o3", "o4")) else (
        "cl100k_base"
    )
    return tiktoken.get_encoding(name)


def count_text(text: str, model: str = "") -> int:
    return len(encoding(model).encode(text, disallowed_special=()))


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # multimodal parts: count the text parts
        # A part's `text` may be anything a client sent; only strings are text.
        return "".join(t for p in content if isinstance(p, dict)
                       and isinstance(t := p.get("text"), str))
    return ""


def count_messages(messages: list[dict], model: str = "", tools: list | None = None) -> int:
    """OpenAI's documented accounting: 3 tokens per message, 1 per name, 3 to prime the reply."""
    enc = encoding(model)
    total = 3
    for m in messages:
        total += 3
        for key, value in m.items():
            if key == "content":
                total += len(enc.encode(_content_text(value), disallowed_special=()))
            elif key == "tool_calls" and isinstance(value, list):
                for tc in value:
                    fn = tc.get("function") if isinstance(tc, dict) else None
                    fn = fn if isinstance(fn, dict) else {}
                    total += len(enc.encode(str(fn.get("name", "")), disallowed_special=()))
                    total += len(enc.encode(str(fn.get("arguments", "")), disallowed_special=()))
            elif isinstance(value, str):
                total += len(enc.encode(value, disallowed_special=()))
                if key == "name":
                    total += 1
    if tools:
        total += len(enc.encode(orjson.dumps(tools).decode(), disallowed_special=()))
    return total


def count_prompt(prompt: Any, model: str = "") -> int:
    """A prompt as OpenAI accepts it: a string, an array of strings, an array of token ids, or
    an array of token-id arrays (token ids count one each)."""
    if isinstance(prompt, str):
        return count_text(prompt, model)
    if isinstance(prompt, int) and not isinstance(prompt, bool):
        return 1
    if isinstance(prompt, list):
        return sum(count_prompt(p, model) for p in prompt)
    return 0


def prompt_tokens(endpoint: str, body: dict, model: str = "") -> int:
    """Prompt tokens of an OpenAI request body, for any of the three endpoints."""
    if endpoint == "chat/completions":
        return count_messages(body["messages"], model, body.get("tools"))
    return count_prompt(body.get("prompt" if endpoint == "completions" else "input"), model)
