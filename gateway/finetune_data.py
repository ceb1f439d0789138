"""Training data for /v1/fine_tuning/jobs: OpenAI's chat JSONL, checked line by line before a
job exists, so a bad file is a 400 that names the line and the field, never a failed job.

One line is one conversation: {"messages": [{"role": "system"|"user"|"assistant",
"content": "...", "weight": 1?}, ...]} with at least one assistant reply to learn from.
The bundled engine has no tool-call format, so tool turns are refused rather than trained as
plain text."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from backends.engine.finetune.job import TrainExample

ROLES = ("system", "user", "assistant")
_UNSUPPORTED_LINE = ("tools", "functions", "parallel_tool_calls")
_UNSUPPORTED_MESSAGE = ("tool_calls", "function_call", "tool_call_id")


class DataProblem(ValueError):
    """A training or validation file that cannot be trained on; `param` is the request field
    (training_file or validation_file), `line` 1-based, `field` the JSON path in the line."""

    def __init__(self, param: str, message: str, line: int | None = None,
                 field: str | None = None) -> None:
        where = f"line {line}" + (f", {field}" if field else "") if line else ""
        super().__init__(f"{param} {where}: {message}" if where else f"{param}: {message}")
        self.param = param
        self.line = line
        self.field = field


@dataclass(frozen=True)
class Dataset:
    examples: list[TrainExample]
    tokens: int  # every token of every example (what one epoch runs through forward)
    targets: int  # tokens the loss is taken on (assistant replies)


def _content(value: Any, param: str, line: int, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # content parts: text only
        parts = []
        for j, p in enumerate(value):
            if not isinstance(p, dict) or p.get("type") != "text" or not isinstance(
                    p.get("text"), str):
                raise DataProblem(param, "only text content parts can be trained on the "
                                  "bundled engine", line, f"{where}.content[{j}]")
            parts.append(p["text"])
        return "".join(parts)
    raise DataProblem(param, f"content must be a string (got {type(value).__name__})", line,
                      f"{where}.content")


def conversation(value: Any, param: str, line: int) -> list[dict[str, Any]]:
    """One line's messages, checked and flattened to {role, content[, weight]}."""
    if not isinstance(value, dict):
        raise DataProblem(param, "each line must be a JSON object", line)
    for key in _UNSUPPORTED_LINE:
        if value.get(key):
            raise DataProblem(param, "tool definitions are not supported by the bundled "
                              "engine's fine-tuning", line, key)
    messages = value.get("messages")
    if not isinstance(messages, list) or not messages:
        raise DataProblem(param, "'messages' must be a non-empty array", line, "messages")
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise DataProblem(param, "each message must be an object", line, where)
        role = m.get("role")
        if role not in ROLES:
            raise DataProblem(param, f"role must be one of {', '.join(ROLES)} (got "
                              f"{role!r})", line, f"{where}.role")
        for key in _UNSUPPORTED_MESSAGE:
            if m.get(key):
                raise DataProblem(param, "tool calls are not supported by the bundled "
                                  "engine's fine-tuning", line, f"{where}.{key}")
        flat = {"role": role,
                                "content": _content(m.get("content"), param, line, where)}
        if "weight" in m:
            if role != "assistant" or m["weight"] not in (0, 1) or isinstance(m["weight"], bool):
                raise DataProblem(param, "weight must be 0 or 1, on assistant messages only",
                                  line, f"{where}.weight")
            # weight 0: the turn stays as context and the engine takes no loss on it.
            flat["weight"] = m["weight"]
        out.append(flat)
    if not any(m["role"] == "assistant" and m.get("weight", 1) for m in out):
        raise DataProblem(param, "the conversation has no assistant message to learn from",
                          line, "messages")
    return out


def parse(raw: bytes, param: str, max_examples: int) -> list[tuple[int, list[dict[str, Any]]]]:
    """(line number, messages) for every non-blank line; the first bad line raises."""
    out: list[tuple[int, list[dict[str, Any]]]] = []
    for n, text in enumerate(raw.split(b"\n"), start=1):
        if not text.strip():
            continue
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError as e:
            raise DataProblem(param, f"not valid JSON ({e})", n) from None
        out.append((n, conversation(value, param, n)))
        if len(out) > max_examples:
            raise DataProblem(param, f"more than {max_examples} examples; split the data or "
                              "raise finetune_max_examples")
    if not out:
        raise DataProblem(param, "the file holds no examples")
    return out


def tokenize(lines: list[tuple[int, list[dict[str, Any]]]], param: str,
             tokenize_chat: Callable[[list[dict[str, Any]]], TrainExample]) -> Dataset:
    """The engine's chat template over each conversation; its refusals name the line."""
    examples: list[TrainExample] = []
    for n, messages in lines:
        try:
            ex = tokenize_chat(messages)
        except ValueError as e:
            raise DataProblem(param, str(e), n, "messages") from None
        if ex.num_targets == 0:
            raise DataProblem(param, "no assistant token to learn from after the chat "
                              "template", n, "messages")
        examples.append(ex)
    return Dataset(examples, sum(len(e.token_ids) for e in examples),
                   sum(e.num_targets for e in examples))


def load(raw: bytes, param: str, max_examples: int, max_tokens: int,
         tokenize_chat: Callable[[list[dict[str, Any]]], TrainExample]) -> Dataset:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataProblem(param, f"the file is not UTF-8 text (byte {e.start})") from None
    data = tokenize(parse(raw, param, max_examples), param, tokenize_chat)
    if data.tokens > max_tokens:
        raise DataProblem(param, f"{data.tokens} tokens, over the limit of {max_tokens} per "
                          "file (finetune_max_tokens)")
    return data
