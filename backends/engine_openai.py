"""OpenAI request and response shapes for the bundled engine: a request body becomes prompt ids
and sampling parameters; engine output becomes the same JSON a remote member would send."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from backends.base import EXTENSION_FIELD, Endpoint, UpstreamError
from backends.engine.sampler import SamplingParams, TokenLogprobs
from backends.engine.spec import SpecFigures
from backends.engine.tokenizer import Tokenizer

MAX_STOP_STRINGS = 4  # OpenAI's limit
CHUNK_OBJECT = {"chat": "chat.completion.chunk", "text": "text_completion"}
MAX_TOP_LOGPROBS = 5


def bad_request(message: str, param: str | None = None,
                code: str = "invalid_request_error") -> UpstreamError:
    """A 400 the gateway passes to the client unchanged (UpstreamError.client_fault)."""
    body = orjson.dumps({"error": {"message": message, "type": "invalid_request_error",
                                   "param": param, "code": code}})
    return UpstreamError(message, kind="http", status=400, body=body)


@dataclass(slots=True)
class EngineRequest:
    kind: Literal["chat", "text"]
    prompt_ids: list[int]
    params: SamplingParams
    include_usage: bool
    logprobs: bool
    echo_prompt: str | None = None  # completions' echo
    priority: int = 0
    speculative: bool = True  # greengate's extension {"speculative": false} opts out


def _number(body: dict, name: str, default: float | None, lo: float, hi: float) -> float | None:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise bad_request(f"{name} must be a number between {lo} and {hi}", name)
    return float(value)


def _int(body: dict, name: str, lo: int, hi: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (
            hi is not None and value > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise bad_request(f"{name} must be an integer {bound}", name)
    return value


def _stops(body: dict) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise bad_request("stop must be a non-empty string or a list of them", "stop")
    if len(stops) > MAX_STOP_STRINGS:
        raise bad_request(f"stop takes at most {MAX_STOP_STRINGS} strings", "stop")
    return stops


def _chat_prompt(body: dict, tok: Tokenizer) -> str:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty list", "messages")
    if body.get("tools"):
        # The engine has no tool-call parser yet; pretending would return calls as plain text.
        raise bad_request("this member (the bundled engine) does not support tools yet",
                          "tools", "unsupported_parameter")
    flat: list[dict[str, Any]] = []
    for m in messages:
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list):  # content parts: keep the text ones
            parts = [p.get("text") for p in content
                     if isinstance(p, dict) and p.get("type") == "text"]
            if len(parts) != len(content) or not all(isinstance(t, str) for t in parts):
                raise bad_request("the bundled engine reads text content parts only",
                                  "messages", "unsupported_content")
            content = "".join(parts)
        flat.append({"role": m.get("role", "user"), "content": content or ""})
    try:
        return tok.apply_chat_template(flat, add_generation_prompt=True)
    except Exception as e:  # a template's own raise_exception() lands here
        raise bad_request(f"the model's chat template refused the messages: {e}",
                          "messages") from None


def parse(endpoint: Endpoint, body: dict, tok: Tokenizer, *, context_window: int,
          default_max_tokens: int) -> EngineRequest:
    """Validate an OpenAI body for the engine; every refusal is an OpenAI-style 400."""
    if endpoint == "embeddings":
        raise bad_request("the bundled engine does not serve embeddings", "model",
                          "unsupported_endpoint")
    n = body.get("n", 1)
    if n != 1:
        raise bad_request("the bundled engine returns one choice per request (n=1)", "n")
    echo: str | None = None
    if endpoint == "chat/completions":
        kind: Literal["chat", "text"] = "chat"
        prompt_ids = tok.encode(_chat_prompt(body, tok))
        want_logprobs = bool(body.get("logprobs"))
        top = _int(body, "top_logprobs", 0, MAX_TOP_LOGPROBS) or 0
        if top and not want_logprobs:
            raise bad_request("top_logprobs needs logprobs: true", "top_logprobs")
    else:
        kind = "text"
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
            prompt = prompt[0]  # a batch of one: ["text"] or [[ids]]
        if isinstance(prompt, str):
            prompt_ids = tok.encode(prompt)
        elif isinstance(prompt, list) and prompt and all(
                isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            prompt_ids = list(prompt)
        else:
            raise bad_request("prompt must be one string or one list of token ids", "prompt")
        if any(t < 0 or t >= tok.vocab_size for t in prompt_ids):
            raise bad_request("prompt holds token ids outside the vocabulary", "prompt")
        top = _int(body, "logprobs", 0, MAX_TOP_LOGPROBS) or 0
        want_logprobs = body.get("logprobs") is not None
        if body.get("echo"):
            echo = prompt if isinstance(prompt, str) else tok.decode(prompt_ids)
    if not prompt_ids:
        raise bad_request("the prompt is empty", "prompt")
    room = context_window - len(prompt_ids)
    if room <= 0:
        raise bad_request(
            f"This model's maximum context length is {context_window} tokens; the prompt has "
            f"{len(prompt_ids)}.", "messages", "context_length_exceeded")
    asked = _int(body, "max_completion_tokens", 1) or _int(body, "max_tokens", 1)
    if asked is not None and asked > room:
        raise bad_request(
            f"This model's maximum context length is {context_window} tokens; the prompt has "
            f"{len(prompt_ids)} and max_tokens asks for {asked}.", "max_tokens",
            "context_length_exceeded")
    params = SamplingParams(
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0) or 0.0,
        # top_p 0 means "only the likeliest token"; the filter always keeps that one.
        top_p=max(_number(body, "top_p", 1.0, 0.0, 1.0) or 0.0, 1e-9),
        top_k=_int(body, "top_k", 0) or 0,
        seed=_int(body, "seed", -(2**63), 2**63 - 1),
        max_tokens=asked if asked is not None else min(default_max_tokens, room),
        stop=_stops(body),
        ignore_eos=bool(body.get("ignore_eos", False)),
        logprobs=top if want_logprobs else None,
    )
    include = bool((body.get("stream_options") or {}).get("include_usage"))
    # vLLM's extension: a lower number is admitted first (FCFS within a priority).
    priority = _int(body, "priority", -(2**31), 2**31 - 1) or 0
    return EngineRequest(kind, prompt_ids, params, include, want_logprobs, echo, priority,
                         _extension(body).get("speculative", True))


def _extension(body: dict) -> dict[str, Any]:
    ext = body.get(EXTENSION_FIELD)
    if ext is None:
        return {}
    if not isinstance(ext, dict):
        raise bad_request(f"'{EXTENSION_FIELD}' must be an object", EXTENSION_FIELD)
    spec = ext.get("speculative", True)
    if not isinstance(spec, bool):
        raise bad_request("greengate.speculative must be true or false",
                          f"{EXTENSION_FIELD}.speculative")
    return ext


def new_id(kind: Literal["chat", "text"]) -> str:
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]


def usage(prompt_tokens: int, completion_tokens: int, joules: float | None,
          energy_source: str | None, speculative: SpecFigures | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"prompt_tokens": prompt_tokens,
                           "completion_tokens": completion_tokens,
                           "total_tokens": prompt_tokens + completion_tokens}
    if joules is not None and energy_source:
        # Measured on this machine's meter; the gateway logs it instead of an estimate.
        out["energy_j"] = joules
        out["energy_source"] = energy_source
    if speculative is not None:
        # For the decision row; the gateway takes it out of the client's usage block.
        out["speculative"] = speculative.as_dict()
    return out


def logprob_entry(tok: Tokenizer, token_id: int, lp: TokenLogprobs) -> dict[str, Any]:
    """One token's logprobs in OpenAI's chat layout (token text, its bytes, alternatives)."""
    def one(tid: int, value: float) -> dict[str, Any]:
        text = tok.decode([tid], skip_special_tokens=False)
        return {"token": text, "logprob": value, "bytes": list(text.encode())}

    return {**one(token_id, lp.logprob), "top_logprobs": [one(t, v) for t, v in lp.top]}


def chat_logprobs(entries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {"content": list(entries)}


def completion(kind: Literal["chat", "text"], rid: str, model: str, text: str,
               finish_reason: str | None, use: dict[str, Any],
               logprob_entries: list[dict[str, Any]] | None) -> dict[str, Any]:
    created = int(time.time())
    if kind == "chat":
        choice: dict[str, Any] = {
            "index": 0, "message": {"role": "assistant", "content": text},
            "finish_reason": finish_reason,
            "logprobs": chat_logprobs(logprob_entries) if logprob_entries is not None else None}
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "finish_reason": finish_reason,
                  "logprobs": text_logprobs(logprob_entries) if logprob_entries is not None
                  else None}
        obj = "text_completion"
    return {"id": rid, "object": obj, "created": created, "model": model,
            "choices": [choice], "usage": use}


def text_logprobs(entries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The legacy completions layout: parallel lists, top alternatives as dicts."""
    offsets, at = [], 0
    for e in entries:
        offsets.append(at)
        at += len(e["token"])
    return {
        "tokens": [e["token"] for e in entries],
        "token_logprobs": [e["logprob"] for e in entries],
        "top_logprobs": [_by_text(e["top_logprobs"]) for e in entries],
        "text_offset": offsets,
    }


def _by_text(alternatives: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Best first, so when two ids decode to the same text the likelier one keeps the key."""
    out: dict[str, float] = {}
    for t in alternatives:
        out.setdefault(t["token"], t["logprob"])
    return out


def chunk(kind: Literal["chat", "text"], rid: str, model: str, created: int, *,
          text: str | None = None, role: bool = False, finish_reason: str | None = None,
          logprob_entries: list[dict[str, Any]] | None = None) -> bytes:
    if kind == "chat":
        delta: dict[str, Any] = {}
        if role:
            delta["role"] = "assistant"
        if text is not None:
            delta["content"] = text
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish_reason,
                                  "logprobs": chat_logprobs(logprob_entries)
                                  if logprob_entries else None}
    else:
        choice = {"index": 0, "text": text or "", "finish_reason": finish_reason,
                  "logprobs": text_logprobs(logprob_entries) if logprob_entries else None}
    return orjson.dumps({"id": rid, "object": CHUNK_OBJECT[kind], "created": created,
                         "model": model, "choices": [choice]})


def usage_chunk(kind: Literal["chat", "text"], rid: str, model: str, created: int,
                use: dict[str, Any]) -> bytes:
    return orjson.dumps({"id": rid, "object": CHUNK_OBJECT[kind], "created": created,
                         "model": model, "choices": [], "usage": use})
