"""Counting tokens ourselves, for upstreams that report no usage (and for routing features).

In routing/ so that both routing (features) and gateway (accounting) use it without routing
reaching up into gateway/. The BPE files come from tiktoken's own cache, which greengate seeds
from the copies it ships (`seed_tiktoken_cache`), so counting never downloads and does not
depend on litellm (an optional extra) or on its private package folder."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import tiktoken

# The BPE files, shipped in routing/artifacts/ (5.3 MB, checked against tiktoken's hashes), by
# the address tiktoken would download them from: tiktoken's cache names a file by the SHA-1 of
# that address.
_BPE_FILES = {
    "cl100k_base": "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
    "o200k_base": "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
}
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


def tiktoken_cache_dir() -> Path | None:
    """Where tiktoken looks for its files (its own rule: TIKTOKEN_CACHE_DIR, DATA_GYM_CACHE_DIR,
    else <tmp>/data-gym-cache); None when the user turned its cache off (an empty value)."""
    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if var in os.environ:
            return Path(os.environ[var]) if os.environ[var] else None
    return Path(tempfile.gettempdir()) / "data-gym-cache"


def seed_tiktoken_cache(name: str) -> Path | None:
    """Put the shipped BPE file of `name` into tiktoken's own cache unless it is there already
    (written to a temporary name, then renamed: concurrent starts never read half a file).
    tiktoken checks the file's SHA-256 when it reads it."""
    cache_dir = tiktoken_cache_dir()
    if cache_dir is None or name not in _BPE_FILES:
        return None
    target = cache_dir / hashlib.sha1(_BPE_FILES[name].encode()).hexdigest()
    if not target.exists():
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
            shutil.copyfile(ARTIFACTS / f"{name}.tiktoken", tmp)
            os.replace(tmp, target)
        except OSError as e:
            raise RuntimeError(f"token counting needs tiktoken's cache folder {cache_dir} "
                               f"writable (or TIKTOKEN_CACHE_DIR set to one that is): {e}") from e
    return target


def encoding_name(model: str) -> str:
    return "o200k_base" if any(p in model for p in ("gpt-4o", "gpt-4.1", "o1", "o3", "o4")) else (
        "cl100k_base")


@cache
def encoding(model: str = "") -> tiktoken.Encoding:
    """tiktoken's encoding for `model`, from its own cache, seeded from the files greengate
    ships: never a download (there is no network where greengate often runs), whether or not
    litellm (which ships the same files in a private folder) is installed."""
    name = encoding_name(model)
    seed_tiktoken_cache(name)
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
