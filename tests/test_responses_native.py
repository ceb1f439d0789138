"""/v1/responses passed through to a member that speaks Responses (`responses: native`): a
real HTTP fake on 127.0.0.1 serving /v1/responses (whole and streamed), driven by the official
openai SDK (responses.create, responses.stream) and the openai-agents package; conversation
state expanded into `input`, mixing with a chat-only member (auto routing, fallback, one
conversation across both), usage and the decision row, the cache, PII redaction, bad input
and upstream failures."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest
from openai import BadRequestError, OpenAI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from backends import MemberConfig
from backends.mock_upstream import MockBehaviour
from gateway import responses as rs
from tests.agent_support import run_weather_agent
from tests.conftest import Gateway, GatewayFactory
from tests.servers import ServerThread

WEATHER_TOOL = {"type": "function", "name": "get_weather", "description": "Weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                               "required": ["city"], "additionalProperties": False}}
EMAIL = "jane.doe@example.com"


# ---- the fake member that speaks Responses ---------------------------------------------------
@dataclass
class NativeFake:
    requests: list[dict[str, Any]] = field(default_factory=list)
    sent: list[bytes] = field(default_factory=list)  # every event's data, as sent
    fail_statuses: list[int] = field(default_factory=list)  # one per request
    stop_after_events: int | None = None  # end the stream early, without response.completed
    fail_after_events: int | None = None  # then send response.failed, as a member may
    reply: str | None = None

    def last(self) -> dict[str, Any]:
        return self.requests[-1]


def _item_text(item: Any) -> str:
    if isinstance(item, str):
        return item
    content = item.get("content") if isinstance(item, dict) else None
    if isinstance(content, str):
        return content
    return " ".join(str(p.get("text") or "") for p in content or [] if isinstance(p, dict))


def _answer(fake: NativeFake, body: dict[str, Any]) -> dict[str, Any]:
    """A Response: an echo of the last user text, a call of the first tool, or the tool's
    result; usage counts words, so a test can tell the upstream's figures from counted ones."""
    items = body["input"] if isinstance(body["input"], list) else [body["input"]]
    last = items[-1]
    words = sum(len(_item_text(i).split()) for i in items) + len(
        str(body.get("instructions") or "").split())
    output: list[dict[str, Any]]
    if isinstance(last, dict) and last.get("type") == "function_call_output":
        text = f"The tool said: {last['output']}"
    elif body.get("tools") and body.get("tool_choice") != "none":
        output = [{"type": "function_call", "id": "fc_" + uuid.uuid4().hex,
                   "call_id": "call_" + uuid.uuid4().hex[:8],
                   "name": body["tools"][0]["name"], "arguments": '{"city": "Paris"}',
                   "status": "completed"}]
        text = ""
    else:
        text = fake.reply or f"You said: {_item_text(last)}"
    if text:
        output = [{"type": "message", "id": "msg_" + uuid.uuid4().hex, "status": "completed",
                   "role": "assistant", "content": [
                       {"type": "output_text", "text": text, "annotations": []}]}]
    out_tokens = len(text.split()) if text else 7
    return {"id": "resp_" + uuid.uuid4().hex + uuid.uuid4().hex[:16],  # 53 chars, as OpenAI's
            "object": "response", "created_at": 1_700_000_000, "status": "completed",
            "error": None, "incomplete_details": None,
            "instructions": body.get("instructions"), "model": body["model"] + "-2026",
            "output": output, "parallel_tool_calls": True, "previous_response_id": None,
            "store": body.get("store", True), "temperature": body.get("temperature", 1.0),
            "tool_choice": body.get("tool_choice", "auto"), "tools": body.get("tools") or [],
            "top_p": 1.0, "truncation": "disabled", "metadata": body.get("metadata") or {},
            "text": {"format": {"type": "text"}},
            "usage": {"input_tokens": 1000 + words, "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens": 100 + out_tokens,
                      "output_tokens_details": {"reasoning_tokens": 0},
                      "total_tokens": 1100 + words + out_tokens}}


def _events(final: dict[str, Any]) -> list[dict[str, Any]]:
    """The event sequence OpenAI streams for `final`."""
    start = {**final, "status": "in_progress", "output": [], "usage": None}
    evs: list[dict[str, Any]] = [{"type": "response.created", "response": start},
                                 {"type": "response.in_progress", "response": start}]
    for i, item in enumerate(final["output"]):
        if item["type"] == "message":
            part = item["content"][0]
            evs.append({"type": "response.output_item.added", "output_index": i,
                        "item": {**item, "status": "in_progress", "content": []}})
            evs.append({"type": "response.content_part.added", "item_id": item["id"],
                        "output_index": i, "content_index": 0,
                        "part": {**part, "text": ""}})
            words = part["text"].split(" ")
            for j, w in enumerate(words):
                evs.append({"type": "response.output_text.delta", "item_id": item["id"],
                            "output_index": i, "content_index": 0,
                            "delta": w if j == len(words) - 1 else w + " "})
            evs.append({"type": "response.output_text.done", "item_id": item["id"],
                        "output_index": i, "content_index": 0, "text": part["text"]})
            evs.append({"type": "response.content_part.done", "item_id": item["id"],
                        "output_index": i, "content_index": 0, "part": part})
        else:
            evs.append({"type": "response.output_item.added", "output_index": i,
                        "item": {**item, "status": "in_progress", "arguments": ""}})
            evs.append({"type": "response.function_call_arguments.delta",
                        "item_id": item["id"], "output_index": i,
                        "delta": item["arguments"]})
            evs.append({"type": "response.function_call_arguments.done",
                        "item_id": item["id"], "output_index": i,
                        "arguments": item["arguments"]})
        evs.append({"type": "response.output_item.done", "output_index": i, "item": item})
    evs.append({"type": "response.completed", "response": final})
    return [{**ev, "sequence_number": n} for n, ev in enumerate(evs)]


def native_upstream(fake: NativeFake) -> Starlette:
    async def responses(request: Request) -> Response:
        body = orjson.loads(await request.body())
        fake.requests.append(body)
        if fake.fail_statuses:
            status = fake.fail_statuses.pop(0)
            err = {"error": {"message": f"native fake failure {status}",
                             "type": "invalid_request_error" if status < 500 else "server_error",
                             "param": "input" if status < 500 else None, "code": None}}
            return Response(orjson.dumps(err), status, media_type="application/json")
        final = _answer(fake, body)
        if not body.get("stream"):
            return Response(orjson.dumps(final), media_type="application/json")
        events = _events(final)
        if fake.stop_after_events is not None:
            events = events[:fake.stop_after_events]
        if fake.fail_after_events is not None:
            failed = {**final, "status": "failed", "output": [], "usage": None,
                      "error": {"code": "server_error", "message": "the member broke"}}
            events = events[:fake.fail_after_events] + [
                {"type": "response.failed", "response": failed,
                 "sequence_number": fake.fail_after_events}]

        async def stream() -> AsyncIterator[bytes]:
            for ev in events:
                data = orjson.dumps(ev)
                fake.sent.append(data)
                yield b"event: " + ev["type"].encode() + b"\ndata: " + data + b"\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/responses", responses, methods=["POST"])])


@pytest.fixture(scope="module")
def native_server() -> Iterator[tuple[ServerThread, NativeFake]]:
    fake = NativeFake()
    server = ServerThread(native_upstream(fake)).start()
    yield server, fake
    server.stop()


@pytest.fixture
def native(native_server: tuple[ServerThread, NativeFake]) -> NativeFake:
    fake = native_server[1]
    fake.__init__()  # type: ignore[misc]
    return fake


def pool(native_url: str, chat_url: str, native_cheaper: bool = True) -> list[dict[str, Any]]:
    cheap, dear = {"input_per_1m": 0.1, "output_per_1m": 0.2}, {"input_per_1m": 5.0,
                                                                "output_per_1m": 9.0}
    return [
        {"name": "native", "kind": "openai", "model": "up-native", "base_url": native_url,
         "responses": "native", "price": cheap if native_cheaper else dear,
         "energy": {"j_per_token": 0.5, "source": "test figure"}, "fallbacks": ["chat"]},
        {"name": "chat", "kind": "openai", "model": "up-small", "base_url": chat_url,
         "price": dear if native_cheaper else cheap},
    ]


@pytest.fixture
def ngw(make_gateway: GatewayFactory, native_server: tuple[ServerThread, NativeFake],
        fake_url: str) -> Gateway:
    return make_gateway(pool=pool(native_server[0].url + "/v1", fake_url))


def _client(gw: Gateway, key: str | None = None) -> OpenAI:
    return OpenAI(base_url=gw.v1, api_key=key or gw.admin_key, max_retries=0)


def _chat_sent(fake: MockBehaviour) -> list[dict[str, Any]]:
    return [r["body"] for r in fake.requests if r["path"].endswith("/chat/completions")]


# ---- pure parts ------------------------------------------------------------------------------
def test_native_body_expands_history_and_keeps_state_here() -> None:
    req = rs.parse({"model": "auto", "input": [
        {"type": "message", "id": "msg_greengate", "role": "user", "content": "and now?"}],
        "instructions": "Be brief.", "previous_response_id": "resp_x", "store": True,
        "tools": [WEATHER_TOOL], "reasoning": {"effort": "low"}, "request_timeout_s": 5})
    history = [{"role": "user", "content": [{"type": "text", "text": "hi"},
                                            {"type": "image_url", "image_url": {"url": "u"}}]},
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": "call_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{}"}}]},
               {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
               {"role": "assistant", "content": "It is sunny."}]
    body = rs.native_body(req, history, "up-native", stream=True)
    assert body["input"] == [
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "hi"}, {"type": "input_image", "image_url": "u"}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather",
         "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
        {"type": "message", "role": "assistant", "content": "It is sunny."},
        {"type": "message", "role": "user", "content": "and now?"}]  # no id the member lacks
    assert body["model"] == "up-native" and body["store"] is False and body["stream"] is True
    assert "previous_response_id" not in body and "request_timeout_s" not in body
    assert body["tools"] == [WEATHER_TOOL] and body["reasoning"] == {"effort": "low"}
    assert body["instructions"] == "Be brief."
    assert rs.native_body(req, [], "m", stream=False)["input"] == body["input"][-1:]
    plain = rs.parse({"model": "m", "input": "hello"})
    assert rs.native_body(plain, [], "m", stream=False)["input"] == "hello"


def test_usage_and_cache_shape() -> None:
    usage = {"input_tokens": 12, "output_tokens": 3, "total_tokens": 15,
             "input_tokens_details": {"cached_tokens": 4}}
    chat = rs.usage_to_chat(usage)
    assert chat == {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15,
                    "prompt_tokens_details": {"cached_tokens": 4}}
    assert rs.usage_to_chat(None) is None and rs.usage_to_chat({"prompt_tokens": 1}) is None
    output = [{"type": "message", "content": [{"type": "output_text", "text": "hi"}]}]
    cached = rs.chat_from_response({"model": "m", "output": output}, chat)
    assert cached["choices"][0]["message"] == {"role": "assistant", "content": "hi"}
    assert rs.output_from_chat(cached)[0][0]["content"][0]["text"] == "hi"


def test_config_native_only_for_openai_members() -> None:
    ok = MemberConfig(name="n", kind="openai", model="m", base_url="http://x/v1",
                      responses="native")
    assert ok.responses == "native"
    assert MemberConfig(name="c", kind="openai", model="m", base_url="u").responses == \
        "translate"
    for bad in ({"kind": "litellm"}, {"kind": "openai", "endpoints": ["http://a", "http://b"],
                                      "base_url": None},
                {"kind": "openai", "mode": "embedding"}):
        with pytest.raises(ValueError, match="responses: native"):
            MemberConfig.model_validate({"name": "n", "model": "m", "base_url": "http://x/v1",
                                         "responses": "native", **bad})


# ---- through greengate -----------------------------------------------------------------------
def test_create_is_passed_through(ngw: Gateway, native: NativeFake, fake: MockBehaviour) -> None:
    client = _client(ngw)
    raw = client.responses.with_raw_response.create(
        model="native", input="hello there", instructions="Be brief.", max_output_tokens=50,
        metadata={"ticket": "7"})
    r = raw.parse()
    assert r.output_text == "You said: hello there" and r.status == "completed"
    sent = native.last()
    assert sent == {"model": "up-native", "input": "hello there", "instructions": "Be brief.",
                    "max_output_tokens": 50, "metadata": {"ticket": "7"}, "store": False}
    assert not _chat_sent(fake)  # nothing was translated to chat
    assert r.id.startswith("resp_") and len(r.id) <= 40  # greengate's id, not the member's
    assert r.store is True and r.previous_response_id is None and r.model == "up-native-2026"
    assert r.usage is not None and r.usage.input_tokens == 1004 and r.usage.output_tokens == 104
    row = ngw.decision(raw.headers["x-request-id"])
    assert (row["endpoint"], row["served_member"], row["status"]) == ("responses", "native", 200)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (1004, 104)
    assert row["usage_source"] == "upstream" and row["upstream_model"] == "up-native-2026"
    assert row["cost_usd"] == pytest.approx((1004 * 0.1 + 104 * 0.2) / 1e6)
    assert row["energy_j"] == pytest.approx(104 * 0.5)
    assert row["features"]["responses_api"] == "native"
    assert row["features"]["upstream_response_id"].startswith("resp_")
    assert client.responses.retrieve(r.id).output_text == r.output_text


def test_conversation_is_expanded_not_forwarded(ngw: Gateway, native: NativeFake) -> None:
    client = _client(ngw)
    first = client.responses.create(model="native", input=[
        {"role": "developer", "content": "You are terse."},
        {"role": "user", "content": [{"type": "input_text", "text": "my name is Ada"}]}])
    second = client.responses.create(model="native", input="what is my name?",
                                     previous_response_id=first.id)
    assert second.previous_response_id == first.id
    sent = native.last()
    assert "previous_response_id" not in sent and sent["store"] is False
    assert sent["input"] == [
        {"type": "message", "role": "system", "content": "You are terse."},
        {"type": "message", "role": "user", "content": "my name is Ada"},
        {"type": "message", "role": "assistant", "content": "You said: my name is Ada"},
        {"type": "message", "role": "user", "content": "what is my name?"}]
    items = client.responses.input_items.list(second.id)
    assert [i.content[0].text for i in items.data] == ["what is my name?"]
    client.responses.delete(first.id)
    with pytest.raises(BadRequestError) as e:
        client.responses.create(model="native", input="x", previous_response_id=first.id)
    assert e.value.body["code"] == "previous_response_not_found"
    # store: false keeps nothing here (and the member was asked to keep nothing either)
    gone = client.responses.create(model="native", input="ephemeral", store=False)
    assert gone.store is False and native.last()["store"] is False
    with pytest.raises(BadRequestError) as e:
        client.responses.create(model="native", input="go on", previous_response_id=gone.id)
    assert e.value.body["param"] == "previous_response_id"


def test_other_teams_and_unknown_ids(ngw: Gateway, native: NativeFake) -> None:
    a = _client(ngw, ngw.create_key("team-a"))
    b = _client(ngw, ngw.create_key("team-b"))
    r = a.responses.create(model="native", input="secret plans")
    before = len(native.requests)
    for client, prev in ((b, r.id), (a, "resp_" + "0" * 32), (a, "x" * 300)):
        raw = httpx.post(ngw.v1 + "/responses", timeout=30,
                         headers={"Authorization": f"Bearer {client.api_key}"},
                         json={"model": "native", "input": "tell", "stream": True,
                               "previous_response_id": prev})
        assert raw.status_code == 400, raw.text
        err = raw.json()["error"]
        assert (err["param"], err["code"]) == ("previous_response_id",
                                               "previous_response_not_found")
        row = ngw.decision(raw.headers["x-request-id"])
        assert (row["endpoint"], row["status"]) == ("responses", 400)
    assert len(native.requests) == before  # refused before any member was asked


def test_stream_events_pass_through(ngw: Gateway, native: NativeFake) -> None:
    with httpx.stream("POST", ngw.v1 + "/responses", headers=ngw.headers(), timeout=30,
                      json={"model": "native", "input": "a b c", "stream": True}) as r:
        assert r.status_code == 200
        body = r.read().decode()
        rid = r.headers["x-request-id"]
    events = [e for e in body.split("\n\n") if e]
    names = [e.split("\n")[0].removeprefix("event: ") for e in events]
    datas = [e.split("\n")[1].removeprefix("data: ").encode() for e in events]
    upstream = [orjson.loads(d)["type"] for d in native.sent]
    assert names == upstream and [orjson.loads(d)["type"] for d in datas] == upstream
    for ours, theirs in zip(datas, native.sent, strict=True):
        if b'"response"' not in theirs:
            assert ours == theirs  # passed through byte for byte
    created, completed = orjson.loads(datas[0]), orjson.loads(datas[-1])
    ours_id = completed["response"]["id"]
    assert created["response"]["id"] == ours_id != orjson.loads(native.sent[-1])["response"]["id"]
    assert native.last()["stream"] is True and "stream_options" not in native.last()
    row = ngw.decision(rid)
    assert (row["endpoint"], row["stream"], row["status"]) == ("responses", True, 200)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (1003, 105)
    # the SDK's accumulator, and the stored turn is there once the stream ends
    client = _client(ngw)
    with client.responses.stream(model="native", input="stream me please",
                                 previous_response_id=ours_id) as s:
        deltas = [ev.delta for ev in s if ev.type == "response.output_text.delta"]
        final = s.get_final_response()
    assert "".join(deltas) == "You said: stream me please" == final.output_text
    assert final.previous_response_id == ours_id and final.usage.output_tokens == 105
    assert client.responses.retrieve(final.id).output_text == final.output_text
    assert native.last()["input"][:2] == [
        {"type": "message", "role": "user", "content": "a b c"},
        {"type": "message", "role": "assistant", "content": "You said: a b c"}]


@pytest.mark.parametrize("stream", [False, True])
def test_function_tool_round_trip(ngw: Gateway, native: NativeFake, stream: bool) -> None:
    client = _client(ngw)
    if stream:
        with client.responses.stream(model="native", input="weather in Paris?",
                                     tools=[WEATHER_TOOL]) as s:
            for _ in s:
                pass
            first = s.get_final_response()
    else:
        first = client.responses.create(model="native", input="weather in Paris?",
                                        tools=[WEATHER_TOOL])
    assert native.last()["tools"] == [WEATHER_TOOL]  # Responses tools, untranslated
    calls = [o for o in first.output if o.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    second = client.responses.create(
        model="native", previous_response_id=first.id, tools=[WEATHER_TOOL],
        input=[{"type": "function_call_output", "call_id": calls[0].call_id,
                "output": "sunny, 21 C"}])
    assert second.output_text == "The tool said: sunny, 21 C"
    assert native.last()["input"][-2:] == [
        {"type": "function_call", "call_id": calls[0].call_id, "name": "get_weather",
         "arguments": '{"city": "Paris"}'},
        {"type": "function_call_output", "call_id": calls[0].call_id,
         "output": "sunny, 21 C"}]


def test_auto_mixes_members_in_one_conversation(ngw: Gateway, native: NativeFake,
                                                fake: MockBehaviour) -> None:
    client = _client(ngw)
    one = client.responses.with_raw_response.create(model="auto", input="first question",
                                                    temperature=0.5)
    assert one.headers["x-greengate-member"] == "native"  # the cheaper one, natively
    two = client.responses.with_raw_response.create(
        model="chat", input="second question", previous_response_id=one.parse().id)
    assert two.headers["x-greengate-member"] == "chat"  # translated to chat
    assert two.parse().output_text == "You said: second question"
    assert _chat_sent(fake)[-1]["messages"] == [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "You said: first question"},
        {"role": "user", "content": "second question"}]
    three = client.responses.create(model="auto", input="third question", temperature=0.5,
                                    previous_response_id=two.parse().id)
    assert three.output_text == "You said: third question"
    assert [_item_text(i) for i in native.last()["input"]] == [
        "first question", "You said: first question", "second question",
        "You said: second question", "third question"]
    rows = [ngw.decision(r.headers["x-request-id"]) for r in (one, two)]
    assert [r["features"].get("responses_api") for r in rows] == ["native", None]
    assert rows[0]["route_reason"] != "requested" and rows[1]["served_member"] == "chat"


@pytest.mark.parametrize("stream", [False, True])
def test_failing_member_falls_back_to_chat(ngw: Gateway, native: NativeFake,
                                           fake: MockBehaviour, stream: bool) -> None:
    native.fail_statuses = [503] * 10  # every try of the native member
    body = {"model": "native", "input": "are you there", "stream": stream}
    r = ngw.post("/v1/responses", body)
    assert r.status_code == 200, r.text
    assert r.headers["x-greengate-member"] == "chat"
    if stream:
        assert "event: response.completed" in r.text and "You said: are you there" in r.text
    else:
        assert r.json()["output"][0]["content"][0]["text"] == "You said: are you there"
    row = ngw.decision(r.headers["x-request-id"])
    assert row["served_member"] == "chat" and row["status"] == 200
    tried = [a["member"] for a in row["attempts"]]
    assert tried[0] == "native" and tried[-1] == "chat"
    assert _chat_sent(fake)[-1]["messages"] == [{"role": "user", "content": "are you there"}]


def test_upstream_errors_are_clean(make_gateway: GatewayFactory, native: NativeFake,
                                   native_server: tuple[ServerThread, NativeFake],
                                   fake_url: str) -> None:
    members = pool(native_server[0].url + "/v1", fake_url)
    members[0]["fallbacks"] = []
    gw = make_gateway(pool=members)
    native.fail_statuses = [400]  # the request's own fault: the member's error, as it said
    r = gw.post("/v1/responses", {"model": "native", "input": "x"})
    assert r.status_code == 400 and r.json()["error"]["message"] == "native fake failure 400"
    assert gw.decision(r.headers["x-request-id"])["status"] == 400
    native.stop_after_events = 5  # the stream ends before response.completed
    client = _client(gw)
    with client.responses.stream(model="native", input="a b") as s:
        types = [ev.type for ev in s]
        assert types[-1] == "response.failed" and "response.output_text.delta" in types
        with pytest.raises(RuntimeError, match="response.completed"):
            s.get_final_response()
    row = gw.latest_decision(2)
    assert row["status"] == 502 and "before response.completed" in row["error"]
    assert row["prompt_tokens"] is not None  # billed for what it generated
    native.stop_after_events, native.fail_after_events = None, 5  # the member's own failure
    with client.responses.stream(model="native", input="a b") as s:
        failed = [ev for ev in s if ev.type == "response.failed"]
    assert failed[0].response.error.message == "the member broke"
    assert failed[0].response.id.startswith("resp_") and len(failed[0].response.id) <= 40
    row = gw.latest_decision(3)
    assert row["status"] == 502 and row["error"] == "the member broke"
    native.fail_statuses = [500] * 10  # no fallback left: a clean 502, not a 500
    r = gw.post("/v1/responses", {"model": "native", "input": "x"})
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_error"
    assert gw.decision(r.headers["x-request-id"])["status"] == 502


def test_cache_serves_a_native_answer_again(ngw: Gateway, native: NativeFake) -> None:
    client = _client(ngw)
    live = client.responses.create(model="native", input="tallest mountain?", temperature=0)
    n = len(native.requests)
    raw = client.responses.with_raw_response.create(model="native", input="tallest mountain?",
                                                    temperature=0)
    assert raw.headers["x-greengate-member"] == "cache" and len(native.requests) == n
    assert raw.parse().output_text == live.output_text
    row = ngw.decision(raw.headers["x-request-id"])
    assert row["cache_hit"] and row["endpoint"] == "responses"


@pytest.mark.parametrize("stream", [False, True])
def test_redacted_prompt_and_restored_answer(ngw: Gateway, native: NativeFake,
                                             stream: bool) -> None:
    r = httpx.put(f"{ngw.url}/admin/policies/default", headers=ngw.headers(), timeout=10,
                  json={"safety": {"pii_action": "redact"}})
    assert r.status_code == 200, r.text
    client = _client(ngw)
    text = f"write to {EMAIL} soon"
    if stream:
        with client.responses.stream(model="native", input=text) as s:
            deltas = [ev.delta for ev in s if ev.type == "response.output_text.delta"]
            out = s.get_final_response()
        assert "".join(deltas) == f"You said: {text}"
    else:
        out = client.responses.create(model="native", input=text)
    assert out.output_text == f"You said: {text}"  # restored for the client
    seen = orjson.dumps(native.last()).decode()
    assert EMAIL not in seen and "<EMAIL_ADDRESS_1>" in seen  # the member never saw it


@pytest.mark.parametrize("stream", [False, True])
def test_budget_is_charged_from_responses_usage(ngw: Gateway, native: NativeFake,
                                                stream: bool) -> None:
    key = ngw.create_key("frugal")
    # "hi": 1001 input tokens at $0.1/1M + 103 output at $0.2/1M = $0.0001207 per call
    r = ngw.post("/admin/budgets", {"scope": "team", "subject": "frugal", "metric": "usd",
                                    "period": "day", "limit": 0.0002})
    assert r.status_code == 201, r.text
    body = {"model": "native", "input": "hi", "stream": stream}
    assert ngw.post("/v1/responses", body, key=key).status_code == 200
    assert ngw.post("/v1/responses", body, key=key).status_code == 200  # $0.00012 < $0.0002
    refused = ngw.post("/v1/responses", body, key=key)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "budget_exceeded"
    assert len(native.requests) == 2  # the refused request never reached the member
    row = ngw.decision(refused.headers["x-request-id"])
    assert (row["endpoint"], row["status"]) == ("responses", 429)
    listed = httpx.get(ngw.url + "/admin/budgets", headers=ngw.headers(), timeout=10).json()
    assert listed[0]["spent"] == pytest.approx(2 * (1001 * 0.1 + 103 * 0.2) / 1e6)


# ---- the openai-agents package against a member that speaks Responses ------------------------
@pytest.mark.parametrize("streamed", [False, True])
def test_openai_agents_runs_a_tool_natively(ngw: Gateway, native: NativeFake,
                                            streamed: bool) -> None:
    out, calls = run_weather_agent(ngw.v1, ngw.admin_key, "native", streamed)
    assert calls == ["Paris"]
    assert out == "The tool said: sunny in Paris"
    assert len(native.requests) == 2
    assert ngw.latest_decision(2)["served_member"] == "native"  # a row per model call
    assert ngw.count_decisions() == 2
    # the agent sends the call back as an item with the member's ids: passed on without them
    assert all("id" not in i for i in native.last()["input"] if isinstance(i, dict)
               and i.get("type") in ("function_call", "function_call_output", "message"))


def test_admin_pool_shows_each_members_protocol(ngw: Gateway) -> None:
    pool_rows = httpx.get(ngw.url + "/admin/pool", headers=ngw.headers(), timeout=10).json()
    members = pool_rows["members"] if isinstance(pool_rows, dict) else pool_rows
    assert {m["name"]: m["responses"] for m in members} == {"native": "native",
                                                            "chat": "translate"}
