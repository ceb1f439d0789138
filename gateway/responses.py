"""The Responses API translated to and from chat completions (pure functions, no I/O).

Newer clients (the OpenAI Agents SDK, `client.responses.create`) speak Responses; most members
speak chat completions. A Responses request becomes one chat request, so routing, the cache,
safety, budgets and the decision row all apply as for chat, and the chat answer (whole or
streamed) becomes a Response object or the Responses stream events the SDK accumulates. For a
member that speaks Responses itself, `native_body` (at the end) is the request it gets instead
(gateway.responses_native)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.errors import GatewayError

ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
_INPUT_PARTS = {"input_text", "input_image", "input_file", "output_text", "refusal", "text"}
METADATA_MAX_KEYS = 16


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _bad(message: str, param: str | None, code: str = "invalid_value") -> GatewayError:
    return GatewayError(400, message, param=param, code=code)


@dataclass(slots=True)
class ResponsesRequest:
    """A validated Responses request and the chat request it becomes."""

    body: dict[str, Any]
    input_items: list[dict[str, Any]]  # this turn's input, as Responses items with ids
    messages: list[dict[str, Any]]  # this turn's input, as chat messages
    chat: dict[str, Any] = field(default_factory=dict)  # the chat request (history included)

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))

    @property
    def store(self) -> bool:
        return self.body.get("store") is not False

    @property
    def previous_response_id(self) -> str | None:
        return self.body.get("previous_response_id")


# ---- request: Responses -> chat -------------------------------------------------------------
def _part_to_chat(part: Any, param: str) -> dict[str, Any]:
    if isinstance(part, str):
        return {"type": "text", "text": part}
    kind = part.get("type") if isinstance(part, dict) else None
    if kind not in _INPUT_PARTS:
        raise _bad(f"'{param}' must be a content part with 'type' one of "
                   f"{', '.join(sorted(_INPUT_PARTS))}.", param)
    if kind in ("input_text", "output_text", "text", "refusal"):
        text = part.get("text") if kind != "refusal" else part.get("refusal")
        if not isinstance(text, str):
            raise _bad(f"'{param}.text' must be a string.", f"{param}.text")
        return {"type": "text", "text": text}
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str) or not url:
            raise _bad(f"'{param}.image_url' must be a URL or a data: URL (file ids are not "
                       "supported).", f"{param}.image_url", "unsupported_value")
        image: dict[str, Any] = {"url": url}
        if isinstance(part.get("detail"), str):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    data = part.get("file_data")
    if not isinstance(data, str):
        raise _bad(f"'{param}.file_data' is required (file ids are not supported).",
                   f"{param}.file_data", "unsupported_value")
    return {"type": "file", "file": {"file_data": data, "filename": part.get("filename")}}


def _content_to_chat(content: Any, param: str, role: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad(f"'{param}' must be a string or an array of content parts.", param)
    parts = [_part_to_chat(p, f"{param}[{j}]") for j, p in enumerate(content)]
    if role != "user" or all(p["type"] == "text" for p in parts):
        if any(p["type"] != "text" for p in parts):
            raise _bad(f"'{param}': only a user message may carry images or files.", param)
        return "".join(p["text"] for p in parts)
    return parts


def _item_with_id(item: dict[str, Any]) -> dict[str, Any]:
    """The item as input_items lists it (OpenAI gives every stored item an id)."""
    kind = item.get("type") or "message"
    prefix = {"message": "msg", "function_call": "fc", "function_call_output": "fco"}.get(
        kind, "item")
    out = {**item, "type": kind}
    out.setdefault("id", new_id(prefix))
    if kind == "message":
        content = item.get("content")
        if isinstance(content, str):
            part = "output_text" if item.get("role") == "assistant" else "input_text"
            out["content"] = [{"type": part, "text": content}]
        out.setdefault("status", "completed")
    return out


def input_to_messages(value: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """`input` (a string or an array of items) as chat messages and as stored items."""
    if isinstance(value, str):
        item = {"type": "message", "role": "user", "content": value}
        return [{"role": "user", "content": value}], [_item_with_id(item)]
    if not isinstance(value, list) or not value:
        raise _bad("'input' must be a string or a non-empty array of input items.", "input")
    messages: list[dict[str, Any]] = []
    items: list[dict[str, Any]] = []
    for i, item in enumerate(value):
        param = f"input[{i}]"
        if not isinstance(item, dict):
            raise _bad(f"'{param}' must be an input item object.", param)
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ROLES:
                raise _bad(f"'{param}.role' must be one of {', '.join(ROLES)}.",
                           f"{param}.role")
            content = _content_to_chat(item.get("content"), f"{param}.content", role)
            messages.append({"role": ROLES[role], "content": content})
        elif kind == "function_call":
            for name in ("call_id", "name", "arguments"):
                if not isinstance(item.get(name), str):
                    raise _bad(f"'{param}.{name}' must be a string.", f"{param}.{name}")
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and last.get("tool_calls") \
                    is not None and not last.get("_closed"):
                last["tool_calls"].append(call)  # parallel calls: one assistant message
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            if not isinstance(item.get("call_id"), str):
                raise _bad(f"'{param}.call_id' must be a string.", f"{param}.call_id")
            output = item.get("output")
            if isinstance(output, list):
                output = _content_to_chat(output, f"{param}.output", "tool")
            if not isinstance(output, str):
                raise _bad(f"'{param}.output' must be a string.", f"{param}.output")
            messages.append({"role": "tool", "tool_call_id": item["call_id"],
                             "content": output})
        elif kind == "reasoning":
            continue  # a reasoning model's notes: chat members have nowhere to take them
        else:
            raise _bad(f"'{param}.type' {kind!r} is not supported; greengate takes message, "
                       "function_call, function_call_output and reasoning items.",
                       f"{param}.type", "unsupported_value")
        items.append(_item_with_id(item))
    return messages, items


def _tools_to_chat(tools: Any) -> list[dict[str, Any]] | None:
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise _bad("'tools' must be an array.", "tools")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise _bad(f"tools[{i}]: greengate serves function tools only "
                       '({"type": "function", "name": ...}).', f"tools[{i}].type",
                       "unsupported_value")
        if not isinstance(tool.get("name"), str) or not tool["name"]:
            raise _bad(f"'tools[{i}].name' must be a non-empty string.", f"tools[{i}].name")
        fn: dict[str, Any] = {"name": tool["name"]}
        for key in ("description", "parameters", "strict"):
            if tool.get(key) is not None:
                fn[key] = tool[key]
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice_to_chat(choice: Any) -> Any:
    if choice is None or choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(
            choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise _bad("'tool_choice' must be 'auto', 'none', 'required' or "
               '{"type": "function", "name": ...}.', "tool_choice")


def _format_to_chat(text: Any) -> dict[str, Any] | None:
    if text is None:
        return None
    fmt = text.get("format") if isinstance(text, dict) else None
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema" and isinstance(fmt.get("schema"), dict):
        schema = {"name": fmt.get("name") or "response", "schema": fmt["schema"]}
        if fmt.get("strict") is not None:
            schema["strict"] = fmt["strict"]
        return {"type": "json_schema", "json_schema": schema}
    raise _bad("'text.format' must be {\"type\": \"text\"}, {\"type\": \"json_object\"} or "
               '{"type": "json_schema", "schema": {...}}.', "text.format")


def parse(body: Any) -> ResponsesRequest:
    """Validate a Responses request (400s name the field) and translate this turn."""
    if not isinstance(body, dict):
        raise _bad("The request body must be a JSON object.", None, "invalid_request")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise _bad("'model' is required and must be a non-empty string.", "model")
    if "input" not in body:
        raise _bad("'input' is required: a string or an array of input items.", "input")
    for name in ("stream", "store", "parallel_tool_calls"):
        if name in body and body[name] is not None and not isinstance(body[name], bool):
            raise _bad(f"'{name}' must be a boolean.", name)
    for name in ("instructions", "previous_response_id", "user"):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise _bad(f"'{name}' must be a string.", name)
    mot = body.get("max_output_tokens")
    if mot is not None and (isinstance(mot, bool) or not isinstance(mot, int) or mot < 1):
        raise _bad("'max_output_tokens' must be a positive integer.", "max_output_tokens")
    meta = body.get("metadata")
    if meta is not None and (not isinstance(meta, dict) or len(meta) > METADATA_MAX_KEYS
                             or not all(isinstance(v, str) for v in meta.values())):
        raise _bad(f"'metadata' must be an object of at most {METADATA_MAX_KEYS} string "
                   "values.", "metadata")
    if body.get("background"):
        raise _bad("'background' responses are not supported; stream instead.", "background",
                   "unsupported_value")
    messages, items = input_to_messages(body["input"])
    req = ResponsesRequest(body, items, messages)
    req.chat = chat_body(req, [])
    return req


def chat_body(req: ResponsesRequest, history: list[dict[str, Any]]) -> dict[str, Any]:
    """The chat request: instructions, the conversation so far, this turn's input."""
    b = req.body
    messages = ([{"role": "system", "content": b["instructions"]}]
                if b.get("instructions") else [])
    messages += [{k: v for k, v in m.items() if not k.startswith("_")} for m in history]
    messages += req.messages
    chat: dict[str, Any] = {"model": b["model"], "messages": messages}
    tools = _tools_to_chat(b.get("tools"))
    if tools:
        chat["tools"] = tools
        choice = _tool_choice_to_chat(b.get("tool_choice"))
        if choice is not None:
            chat["tool_choice"] = choice
        if b.get("parallel_tool_calls") is not None:
            chat["parallel_tool_calls"] = b["parallel_tool_calls"]
    fmt = _format_to_chat(b.get("text"))
    if fmt is not None:
        chat["response_format"] = fmt
    for name in ("temperature", "top_p", "user", "request_timeout_s"):
        if b.get(name) is not None:
            chat[name] = b[name]
    if b.get("max_output_tokens") is not None:
        chat["max_tokens"] = b["max_output_tokens"]
    if req.stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat


# ---- answer: chat -> Responses --------------------------------------------------------------
def usage_from_chat(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    if not isinstance(usage, dict):
        return None
    inp = int(usage.get("prompt_tokens") or 0)
    out = int(usage.get("completion_tokens") or 0)
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    return {"input_tokens": inp, "input_tokens_details": {"cached_tokens": int(cached)},
            "output_tokens": out, "output_tokens_details": {"reasoning_tokens": int(reasoning)},
            "total_tokens": int(usage.get("total_tokens") or inp + out)}


def message_item(text: str, item_id: str | None = None, status: str = "completed",
                 refusal: str | None = None) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if text:
        content.append({"type": "output_text", "text": text, "annotations": [],
                        "logprobs": []})
    if refusal:
        content.append({"type": "refusal", "refusal": refusal})
    return {"type": "message", "id": item_id or new_id("msg"), "status": status,
            "role": "assistant", "content": content}


def call_item(call_id: str, name: str, arguments: str, item_id: str | None = None,
              status: str = "completed") -> dict[str, Any]:
    return {"type": "function_call", "id": item_id or new_id("fc"), "call_id": call_id,
            "name": name, "arguments": arguments, "status": status}


def output_from_chat(data: dict[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
    """A chat completion's first choice as output items, and its finish reason."""
    choice = (data.get("choices") or [{}])[0] or {}
    msg = choice.get("message") or {}
    items: list[dict[str, Any]] = []
    text = msg.get("content")
    if isinstance(text, list):  # some providers answer content parts
        text = "".join(str(p.get("text") or "") for p in text if isinstance(p, dict))
    if text or msg.get("refusal"):
        items.append(message_item(str(text or ""), refusal=msg.get("refusal")))
    for tc in msg.get("tool_calls") or []:
        fn = tc.get("function") or {}
        items.append(call_item(str(tc.get("id") or new_id("call")), str(fn.get("name") or ""),
                               str(fn.get("arguments") or "")))
    return items, choice.get("finish_reason")


def output_to_messages(output: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The answer as chat history, for the next turn's previous_response_id."""
    text = "".join(p.get("text", "") for it in output if it["type"] == "message"
                   for p in it["content"] if p["type"] == "output_text")
    calls = [{"id": it["call_id"], "type": "function",
              "function": {"name": it["name"], "arguments": it["arguments"]}}
             for it in output if it["type"] == "function_call"]
    msg: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        msg["tool_calls"] = calls
    return [msg] if text or calls else []


def response_object(req: ResponsesRequest, rid: str, created_at: int, model: str,
                    output: list[dict[str, Any]], usage: dict[str, Any] | None,
                    status: str = "completed", finish_reason: str | None = None,
                    error: dict[str, Any] | None = None) -> dict[str, Any]:
    """OpenAI's Response object, echoing the request's settings."""
    b = req.body
    incomplete = None
    if status == "completed" and finish_reason in ("length", "content_filter"):
        status = "incomplete"
        incomplete = {"reason": "max_output_tokens" if finish_reason == "length"
                      else "content_filter"}
    fmt = b.get("text") if isinstance(b.get("text"), dict) else {"format": {"type": "text"}}
    return {
        "id": rid, "object": "response", "created_at": created_at, "status": status,
        "background": False, "error": error, "incomplete_details": incomplete,
        "instructions": b.get("instructions"), "max_output_tokens": b.get("max_output_tokens"),
        "model": model, "output": output,
        "parallel_tool_calls": b.get("parallel_tool_calls") is not False,
        "previous_response_id": b.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None}, "store": req.store,
        "temperature": b.get("temperature", 1.0), "text": fmt,
        "tool_choice": b.get("tool_choice") or "auto", "tools": b.get("tools") or [],
        "top_p": b.get("top_p", 1.0), "truncation": "disabled", "usage": usage,
        "user": b.get("user"), "metadata": b.get("metadata") or {},
    }


def now() -> int:
    return int(time.time())


# ---- streams: chat chunks -> Responses events -----------------------------------------------
class StreamTranslator:
    """Chat completion chunks in, Responses stream events out, with the indexes and ids the
    SDK's stream accumulator checks (each item added before its deltas, done before the
    response completes)."""

    def __init__(self, req: ResponsesRequest, rid: str, model: str) -> None:
        self.req, self.rid, self.model = req, rid, model
        self.created_at = now()
        self.seq = 0
        self.output: list[dict[str, Any]] = []
        self._msg: int | None = None  # output index of the open message
        self._calls: dict[int, int] = {}  # chat tool-call index -> output index
        self._open: list[int] = []
        self.usage: dict[str, Any] | None = None
        self.finish_reason: str | None = None
        self.response: dict[str, Any] | None = None

    def _event(self, kind: str, **fields: Any) -> bytes:
        """One SSE event, serialised at once (the items it shows change afterwards)."""
        ev = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(ev) + b"\n\n"

    def _snapshot(self, status: str, **kw: Any) -> dict[str, Any]:
        return response_object(self.req, self.rid, self.created_at, self.model,
                               self.output if status != "in_progress" else [], self.usage,
                               status, **kw)

    def start(self) -> list[bytes]:
        snap = self._snapshot("in_progress")
        return [self._event("response.created", response=snap),
                self._event("response.in_progress", response=snap)]

    def _close(self, index: int) -> list[bytes]:
        item = self.output[index]
        events: list[bytes] = []
        if item["type"] == "message":
            part = item["content"][0]
            events.append(self._event("response.output_text.done", item_id=item["id"],
                                      output_index=index, content_index=0, text=part["text"],
                                      logprobs=[]))
            events.append(self._event("response.content_part.done", item_id=item["id"],
                                      output_index=index, content_index=0, part=part))
            self._msg = None
        else:
            events.append(self._event("response.function_call_arguments.done",
                                      item_id=item["id"], output_index=index,
                                      name=item["name"], arguments=item["arguments"]))
        item["status"] = "completed"
        events.append(self._event("response.output_item.done", output_index=index, item=item))
        self._open.remove(index)
        return events

    def chunk(self, data: dict[str, Any]) -> list[bytes]:
        events: list[bytes] = []
        if data.get("usage"):
            self.usage = usage_from_chat(data["usage"])
        if isinstance(data.get("model"), str):
            self.model = data["model"]
        for choice in data.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if text:
                if self._msg is None:
                    self._msg = len(self.output)
                    item = message_item("", status="in_progress")
                    item["content"] = []
                    self.output.append(item)
                    self._open.append(self._msg)
                    events.append(self._event("response.output_item.added",
                                              output_index=self._msg, item=item))
                    part = {"type": "output_text", "text": "", "annotations": [],
                            "logprobs": []}
                    item["content"].append(part)
                    events.append(self._event("response.content_part.added",
                                              item_id=item["id"], output_index=self._msg,
                                              content_index=0, part=part))
                item = self.output[self._msg]
                item["content"][0]["text"] += text
                events.append(self._event("response.output_text.delta", item_id=item["id"],
                                          output_index=self._msg, content_index=0,
                                          delta=text, logprobs=[]))
            for tc in delta.get("tool_calls") or []:
                ci = tc.get("index", 0)
                fn = tc.get("function") or {}
                if ci not in self._calls:
                    if self._msg is not None:
                        events += self._close(self._msg)
                    index = len(self.output)
                    item = call_item(str(tc.get("id") or new_id("call")),
                                     str(fn.get("name") or ""), "", status="in_progress")
                    self.output.append(item)
                    self._open.append(index)
                    self._calls[ci] = index
                    events.append(self._event("response.output_item.added",
                                              output_index=index, item=item))
                index = self._calls[ci]
                args = fn.get("arguments")
                if args:
                    self.output[index]["arguments"] += args
                    events.append(self._event("response.function_call_arguments.delta",
                                              item_id=self.output[index]["id"],
                                              output_index=index, delta=args))
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return events

    def finish(self) -> list[bytes]:
        events: list[bytes] = []
        for index in list(self._open):
            events += self._close(index)
        self.response = self._snapshot("completed", finish_reason=self.finish_reason)
        kind = ("response.completed" if self.response["status"] == "completed"
                else "response.incomplete")
        events.append(self._event(kind, response=self.response))
        return events

    def fail(self, message: str, code: str | None) -> list[bytes]:
        """The upstream failed mid-way: a response.failed event (the SDK raises on it)."""
        self.response = self._snapshot("failed", error={"code": code or "server_error",
                                                        "message": message})
        return [self._event("response.failed", response=self.response)]


# ---- members that speak Responses (`responses: native`) -------------------------------------
# Item types whose `id` names an item the upstream stored; greengate sends store: false, so an
# upstream that never saw it would refuse the id (OpenAI: "Items are not persisted when store
# is set to false"). The item's content is all it needs.
_UNSTORED_ID_ITEMS = {"message", "function_call", "function_call_output"}


def _part_to_item(part: dict[str, Any], role: str) -> dict[str, Any]:
    kind = part.get("type")
    if kind == "image_url":
        image = part.get("image_url") or {}
        out = {"type": "input_image", "image_url": image.get("url")}
        if image.get("detail"):
            out["detail"] = image["detail"]
        return out
    if kind == "file":
        f = part.get("file") or {}
        return {"type": "input_file", "file_data": f.get("file_data"),
                "filename": f.get("filename")}
    text_type = "output_text" if role == "assistant" else "input_text"
    return {"type": text_type, "text": str(part.get("text") or part.get("refusal") or "")}


def messages_to_items(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat messages (a stored conversation, or a redacted request) as Responses input items:
    the inverse of `input_to_messages` for what chat can hold."""
    items: list[dict[str, Any]] = []
    for m in messages:
        role = m.get("role")
        content = m.get("content")
        if role == "tool":
            items.append({"type": "function_call_output", "call_id": m.get("tool_call_id"),
                          "output": content if isinstance(content, str) else ""})
            continue
        if isinstance(content, list):
            content = [_part_to_item(p, str(role)) for p in content if isinstance(p, dict)]
        if content:  # an assistant message with only tool calls has no text
            items.append({"type": "message", "role": role, "content": content})
        for tc in m.get("tool_calls") or []:
            fn = tc.get("function") or {}
            items.append({"type": "function_call", "call_id": tc.get("id"),
                          "name": fn.get("name"), "arguments": fn.get("arguments") or ""})
    return items


def _turn_items(value: Any) -> list[dict[str, Any]]:
    """This turn's `input` as items, as the client sent them, less ids the upstream never
    stored."""
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    out = []
    for item in value:
        if item.get("type", "message") in _UNSTORED_ID_ITEMS and "id" in item:
            item = {k: v for k, v in item.items() if k != "id"}
        out.append(item)
    return out


# What greengate keeps to itself: its own extension, the state it holds (previous_response_id,
# store), and how the request reaches the member (stream is set per call).
_NOT_FORWARDED = ("previous_response_id", "store", "stream", "request_timeout_s")


def native_body(req: ResponsesRequest, history: list[dict[str, Any]], model: str,
                stream: bool, redacted: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The Responses request for a member that speaks Responses: the client's body as sent,
    with greengate's stored conversation expanded into `input` (the member may never have
    seen the earlier turns: routing may have served them elsewhere) and store: false (the
    conversation lives in greengate). `redacted`: the chat messages after PII redaction
    (instructions first when given), which then replace instructions and input."""
    b = req.body
    out = {k: v for k, v in b.items() if k not in _NOT_FORWARDED}
    out["model"] = model
    if redacted is not None:
        msgs = redacted
        if b.get("instructions"):
            out["instructions"] = msgs[0].get("content")
            msgs = msgs[1:]
        out["input"] = messages_to_items(msgs)
    elif history:
        out["input"] = messages_to_items(history) + _turn_items(b["input"])
    else:
        out["input"] = b["input"] if isinstance(b["input"], str) else _turn_items(b["input"])
    out["store"] = False
    if stream:
        out["stream"] = True
    return out


def usage_to_chat(usage: Any) -> dict[str, Any] | None:
    """A Response's usage (input/output tokens) in chat's terms, for the accounting."""
    if not isinstance(usage, dict) or not isinstance(usage.get("input_tokens"), int):
        return None
    inp, out = usage["input_tokens"], int(usage.get("output_tokens") or 0)
    chat: dict[str, Any] = {"prompt_tokens": inp, "completion_tokens": out,
                            "total_tokens": int(usage.get("total_tokens") or inp + out)}
    cached = (usage.get("input_tokens_details") or {}).get("cached_tokens")
    if cached:
        chat["prompt_tokens_details"] = {"cached_tokens": int(cached)}
    return chat


def output_text(output: Any) -> str:
    """The text of a Response's output messages."""
    if not isinstance(output, list):
        return ""
    return "".join(str(p.get("text") or "") for it in output
                   if isinstance(it, dict) and it.get("type") == "message"
                   for p in it.get("content") or []
                   if isinstance(p, dict) and p.get("type") == "output_text")


def chat_from_response(response: dict[str, Any], usage: dict[str, Any] | None) -> dict[str, Any]:
    """A text answer from a Responses member as the chat completion the semantic cache keeps
    (a hit is served to chat and Responses clients alike)."""
    finish = "length" if (response.get("incomplete_details") or {}).get(
        "reason") == "max_output_tokens" else "stop"
    return {"id": "chatcmpl-" + uuid.uuid4().hex, "object": "chat.completion",
            "created": int(response.get("created_at") or now()),
            "model": response.get("model"),
            "choices": [{"index": 0, "finish_reason": finish, "message": {
                "role": "assistant", "content": output_text(response.get("output"))}}],
            "usage": usage}


def has_calls(output: Any) -> bool:
    return isinstance(output, list) and any(
        isinstance(it, dict) and it.get("type") not in ("message", "reasoning") for it in output)
