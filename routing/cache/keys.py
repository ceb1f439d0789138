"""Cache keys: what makes two requests the same (exact) or comparable (same context).

* `exact`: sha256 of the normalised request (`exact_key`): model, messages (whitespace
  collapsed), every parameter that can change the answer; JSON key order does not matter.
* `context_hash`: sha256 of everything but the last user turn: system prompt, earlier turns,
  tool results, the parameters that shape the answer and the numbers in the last turn. A
  semantic hit needs the same context exactly (see routing/cache/__init__.py for why).
* `entry_id`: derived from the team as well as the exact key, so nothing of one team can be
  returned to another."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from routing.features import content_text

# Chosen by bench/cache_eval.py on 20,000 QQP pairs (seed 0; numbers guard on): the lowest
# threshold on a 0.005 grid whose wrong-hit rate is under 1% with 95% confidence. At 0.97:
# 0.74% of non-duplicates served (92 of 12,482; upper 0.90%), recall 12.7%, precision 91.2%.
# 0.965 is the lowest with an observed rate under 1% (0.89%, upper 1.07%; recall 14.8%); the
# 10,000-pair default run of the benchmark picks 0.965 (0.72%, upper 0.97%; recall 15.1%).
# QQP's non-duplicates were picked as look-alikes, so this is a hard test: real traffic's
# near-misses are rarer, and so are its exact paraphrases.
DEFAULT_THRESHOLD = 0.97
KEY_VERSION = "gg-cache-v1"  # part of every hash: bump when the normalisation changes

# Request fields that cannot change the answer (transport, bookkeeping): left out of the key.
IGNORED_FIELDS = frozenset(
    {
        "stream",
        "stream_options",
        "user",
        "metadata",
        "store",
        "service_tier",
        "safety_identifier",
        "prompt_cache_key",
    }
)
# Fields that change what kind of answer is valid: part of the context, so a semantic hit can
# only come from a request that asked for the same kind of answer from the same model.
SHAPE_FIELDS = (
    "model",
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "parallel_tool_calls",
    "response_format",
    "n",
    "logprobs",
    "top_logprobs",
    "modalities",
    "audio",
)
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


# -- keys -------------------------------------------------------------------------------------


def _sha256(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    data = text.encode("utf-8", "surrogatepass")  # JSON input may hold lone surrogates
    return hashlib.sha256(data).hexdigest()


def _canon(value: Any) -> Any:
    """JSON value in canonical form: integral floats as ints (1.0 and 1 are the same
    temperature), nulls dropped from objects."""
    if isinstance(value, bool) or value is None or isinstance(value, str | int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else value
    if isinstance(value, dict):
        return {str(k): _canon(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_canon(v) for v in value]
    return str(value)


def _collapse(text: str) -> str:
    return " ".join(text.split())




def _norm_content(content: Any) -> Any:
    if isinstance(content, str):
        return _collapse(content)
    if isinstance(content, list):
        parts = [p for p in content if p is not None]
        if all(isinstance(p, dict) and p.get("type", "text") == "text" for p in parts):
            # [{"type": "text", "text": "hi"}] and "hi" are the same question
            return _collapse(" ".join(str(p.get("text", "")) for p in parts))
        return [
            {**_canon(p), "text": _collapse(p["text"])}
            if isinstance(p, dict) and isinstance(p.get("text"), str)
            else _canon(p)
            for p in parts
        ]
    return _canon(content)


def _norm_message(m: Any) -> Any:
    if not isinstance(m, dict):
        return _canon(m)
    # Empty values ([] tool_calls, "" name) mean the same as absent: SDKs echo them back.
    out = {k: _canon(v) for k, v in m.items() if v not in (None, [], {}, "") and k != "content"}
    content = _norm_content(m.get("content"))
    if content not in (None, "", []):
        out["content"] = content
    return out


def _messages(body: dict) -> list[Any] | None:
    messages = body.get("messages")
    if isinstance(messages, list):
        return messages
    inp = body.get("input")
    return inp if isinstance(inp, list) else None


def _last_turn_index(msgs: list[Any]) -> int:
    """Index of the last user message; without one, of the last non-system message (the same
    choice as routing.features.request_text)."""
    dicts = [i for i, m in enumerate(msgs) if isinstance(m, dict)]
    users = [i for i in dicts if msgs[i].get("role") == "user"]
    if users:
        return users[-1]
    rest = [i for i in dicts if msgs[i].get("role") not in ("system", "developer")]
    return (rest or dicts or [-1])[-1]


def exact_key(body: dict) -> str:
    """sha256 hex of the normalised request: equal for requests that must get the same answer
    (key order, whitespace in messages, 1 vs 1.0, stream/user fields do not matter), different
    when the model, a message, or any sampling/format parameter differs."""
    payload: dict[str, Any] = {
        k: _canon(v) for k, v in body.items() if k not in IGNORED_FIELDS and v is not None
    }
    if isinstance(body.get("messages"), list):
        payload["messages"] = [_norm_message(m) for m in body["messages"]]
    for field in ("prompt", "input"):
        v = body.get(field)
        if isinstance(v, str):
            payload[field] = _collapse(v)
        elif isinstance(v, list):
            payload[field] = [_collapse(x) if isinstance(x, str) else _norm_message(x) for x in v]
    if isinstance(payload.get("model"), str):
        payload["model"] = payload["model"].strip()
    return _sha256([KEY_VERSION, "exact", payload])


def last_turn_text(body: dict) -> str:
    """The text whose embedding goes into `CacheKey.embedding`: the last user turn alone
    (its context is matched exactly through `context_hash`)."""
    msgs = _messages(body)
    if msgs is not None:
        i = _last_turn_index(msgs)
        return content_text(msgs[i].get("content")) if i >= 0 else ""
    for field in ("input", "prompt"):
        v = body.get(field)
        if isinstance(v, str):
            return v
        if isinstance(v, list):
            return "\n".join(x for x in v if isinstance(x, str))
    return ""


def numbers_signature(text: str) -> list[str]:
    """The numbers of a text in order ("1,000" == "1000"): questions that differ in a number
    usually need different answers but embed almost identically."""
    return [n.replace(",", "") for n in _NUMBER.findall(text)]


def context_hash(body: dict, *, numbers: bool = True) -> str:
    """sha256 hex of everything except the last user turn: system/developer prompts, earlier
    turns and tool results (messages after the last user turn included), the answer-shaping
    parameters (SHAPE_FIELDS) and, unless `numbers=False`, the numbers of the last turn."""
    msgs = _messages(body)
    context: list[Any] = []
    if msgs is not None:
        i = _last_turn_index(msgs)
        context = [_norm_message(m) for j, m in enumerate(msgs) if j != i]
    shape = {k: _canon(body[k]) for k in SHAPE_FIELDS if body.get(k) is not None}
    if isinstance(shape.get("model"), str):
        shape["model"] = shape["model"].strip()
    nums = numbers_signature(last_turn_text(body)) if numbers else None
    return _sha256([KEY_VERSION, "context", context, shape, nums])


def entry_id(team: str, exact: str) -> str:
    """Entry id (the `cache_entries` primary key): per team, so two teams sending the same
    request get two entries, never a shared one."""
    return hashlib.sha256(f"{KEY_VERSION}\0{team}\0{exact}".encode()).hexdigest()


def _context_code(ctx: str) -> int:
    """64-bit code of a context hash for the vectorised filter; a (2^-64) collision is caught
    by comparing the full hash of the entry found."""
    return int.from_bytes(hashlib.blake2b(ctx.encode(), digest_size=8).digest(), "little")


@dataclass(frozen=True)
class CacheKey:
    team: str  # namespace: entries of one team are never visible to another
    exact: str  # exact_key(body)
    context_hash: str  # context_hash(body): a semantic hit needs the same context
    embedding: np.ndarray | None  # L2-normalised embedding of the last user turn, or None
    task: str | None = None  # task type, for per-task thresholds
    text: str = ""  # the last user turn (what the verifier compares)
    mode: str = "balanced"  # CachePolicy.semantic: strict | balanced | off


def make_key(
    body: dict,
    team: str,
    embedding: np.ndarray | None = None,
    task: str | None = None,
    mode: str = "balanced",
) -> CacheKey:
    return CacheKey(
        team, exact_key(body), context_hash(body), embedding, task, last_turn_text(body), mode
    )
