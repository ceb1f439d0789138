"""/v1/responses over chat-only members (members that speak Responses themselves:
tests/test_responses_native.py), driven by the official openai SDK (responses.create,
responses.stream) and by the openai-agents package running an agent with a function tool;
previous_response_id, store: false, team scoping, bad input, GET /v1/models/{id}."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import orjson
import pytest
from openai import BadRequestError, NotFoundError, OpenAI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from backends.mock_upstream import MockBehaviour
from tests.agent_support import run_weather_agent
from tests.conftest import Gateway, GatewayFactory
from tests.servers import ServerThread

WEATHER_TOOL = {"type": "function", "name": "get_weather", "description": "Weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                               "required": ["city"], "additionalProperties": False}}


def _client(gw: Gateway, key: str | None = None) -> OpenAI:
    return OpenAI(base_url=gw.v1, api_key=key or gw.admin_key, max_retries=0)


def _sent(fake: MockBehaviour) -> dict:
    """The chat request greengate sent upstream last."""
    return [r for r in fake.requests if r["path"].endswith("/chat/completions")][-1]["body"]


def test_create_text(gw: Gateway, fake: MockBehaviour) -> None:
    client = _client(gw)
    raw = client.responses.with_raw_response.create(model="fake-small", input="hello there",
                                                    instructions="Be brief.",
                                                    max_output_tokens=50)
    r = raw.parse()
    assert r.object == "response" and r.id.startswith("resp_") and r.status == "completed"
    assert r.output_text == "You said: hello there"
    assert r.usage is not None and r.usage.input_tokens > 0 and r.usage.output_tokens == 4
    assert r.model == "fake-small" and r.instructions == "Be brief."
    body = _sent(fake)
    assert body["messages"] == [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "hello there"}]
    assert body["max_tokens"] == 50
    row = gw.decision(raw.headers["x-request-id"])
    assert (row["endpoint"], row["served_member"], row["status"]) == (
        "responses", "fake-small", 200)
    assert row["completion_tokens"] == 4


def test_items_and_conversation_state(gw: Gateway, fake: MockBehaviour) -> None:
    client = _client(gw)
    first = client.responses.create(model="fake-small", input=[
        {"role": "developer", "content": "You are terse."},
        {"role": "user", "content": [{"type": "input_text", "text": "my name is Ada"}]}])
    second = client.responses.create(model="fake-small", input="what is my name?",
                                     previous_response_id=first.id)
    assert second.previous_response_id == first.id
    assert _sent(fake)["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "my name is Ada"},
        {"role": "assistant", "content": "You said: my name is Ada"},
        {"role": "user", "content": "what is my name?"}]
    got = client.responses.retrieve(second.id)
    assert got.id == second.id and got.output_text == second.output_text
    items = client.responses.input_items.list(second.id)
    assert [i.type for i in items.data] == ["message"]
    assert items.data[0].content[0].text == "what is my name?"
    client.responses.delete(first.id)
    with pytest.raises(NotFoundError):
        client.responses.retrieve(first.id)


def test_store_false_keeps_nothing(gw: Gateway) -> None:
    client = _client(gw)
    r = client.responses.create(model="fake-small", input="ephemeral", store=False)
    assert r.store is False
    with pytest.raises(NotFoundError):
        client.responses.retrieve(r.id)
    with pytest.raises(BadRequestError) as e:
        client.responses.create(model="fake-small", input="go on", previous_response_id=r.id)
    assert e.value.body["param"] == "previous_response_id"


def test_other_teams_conversation_is_unknown(gw: Gateway) -> None:
    a = _client(gw, gw.create_key("team-a"))
    b = _client(gw, gw.create_key("team-b"))
    r = a.responses.create(model="fake-small", input="secret plans")
    with pytest.raises(NotFoundError):
        b.responses.retrieve(r.id)
    with pytest.raises(BadRequestError) as e:
        b.responses.create(model="fake-small", input="tell me", previous_response_id=r.id)
    assert e.value.body["code"] == "previous_response_not_found"
    assert a.responses.retrieve(r.id).id == r.id


def test_unknown_previous_response_has_its_decision_row(gw: Gateway) -> None:
    r = gw.post("/v1/responses", {"model": "fake-small", "input": "x",
                                  "previous_response_id": "resp_nope"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "previous_response_id"
    row = gw.decision(r.headers["x-request-id"])
    assert (row["endpoint"], row["status"]) == ("responses", 400)


def test_stream_text(gw: Gateway) -> None:
    client = _client(gw)
    deltas = []
    with client.responses.stream(model="fake-small", input="stream me please") as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = stream.get_final_response()
    assert "".join(deltas) == "You said: stream me please" == final.output_text
    assert final.status == "completed" and final.usage is not None
    assert final.usage.output_tokens == 5
    assert client.responses.retrieve(final.id).output_text == final.output_text


def test_raw_stream_event_order(gw: Gateway) -> None:
    with httpx.stream("POST", gw.v1 + "/responses", headers=gw.headers(), timeout=30,
                      json={"model": "fake-small", "input": "a b", "stream": True}) as r:
        assert r.status_code == 200
        types = [orjson.loads(line[5:])["type"] for line in r.iter_lines()
                 if line.startswith("data:")]
        rid = r.headers["x-request-id"]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[2:4] == ["response.output_item.added", "response.content_part.added"]
    assert "response.output_text.delta" in types
    assert types[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.completed"]
    row = gw.decision(rid)
    assert row["endpoint"] == "responses" and row["stream"] and row["status"] == 200


@pytest.mark.parametrize("stream", [False, True])
def test_function_tool_round_trip(gw: Gateway, fake: MockBehaviour, stream: bool) -> None:
    client = _client(gw)
    if stream:
        with client.responses.stream(model="fake-small", input="weather in Paris?",
                                     tools=[WEATHER_TOOL]) as s:
            for _ in s:
                pass
            first = s.get_final_response()
    else:
        first = client.responses.create(model="fake-small", input="weather in Paris?",
                                        tools=[WEATHER_TOOL])
    calls = [o for o in first.output if o.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert orjson.loads(calls[0].arguments)["city"] == "Paris"
    sent = _sent(fake)
    assert sent["tools"] == [{"type": "function", "function": {
        k: WEATHER_TOOL[k] for k in ("name", "description", "parameters")}}]
    client.responses.create(
        model="fake-small", previous_response_id=first.id, tool_choice="none",
        tools=[WEATHER_TOOL],
        input=[{"type": "function_call_output", "call_id": calls[0].call_id,
                "output": "sunny, 21 C"}])
    messages = _sent(fake)["messages"]
    assert messages[-2]["tool_calls"][0]["id"] == calls[0].call_id
    assert messages[-1] == {"role": "tool", "tool_call_id": calls[0].call_id,
                            "content": "sunny, 21 C"}


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "fake-small"}, "input"),
    ({"model": "fake-small", "input": []}, "input"),
    ({"model": "fake-small", "input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
    ({"model": "fake-small", "input": "x", "tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"model": "fake-small", "input": "x", "max_output_tokens": 0}, "max_output_tokens"),
    ({"model": "fake-small", "input": [{"type": "function_call_output", "output": "x"}]},
     "input[0].call_id"),
    ({"input": "x"}, "model"),
])
def test_bad_input(gw: Gateway, body: dict, param: str) -> None:
    r = gw.post("/v1/responses", body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert gw.decision(r.headers["x-request-id"])["status"] == 400


def test_unknown_model_and_models_retrieve(gw: Gateway) -> None:
    client = _client(gw)
    r = gw.post("/v1/responses", {"model": "nope", "input": "x"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    m = client.models.retrieve("fake-small")
    assert m.id == "fake-small" and m.object == "model"
    assert client.models.retrieve("auto").id == "auto"
    with pytest.raises(NotFoundError):
        client.models.retrieve("nope")
    limited = _client(gw, gw.create_key("team-c", ["fake-large"]))
    with pytest.raises(NotFoundError):
        limited.models.retrieve("fake-small")


# ---- the openai-agents package ---------------------------------------------------------------
def _agent_upstream() -> Starlette:
    """A chat provider that asks for the tool once, then answers from its result."""

    async def chat(request: Request) -> Response:
        body = orjson.loads(await request.body())
        last = body["messages"][-1]
        rid = "chatcmpl-" + uuid.uuid4().hex[:12]
        if last["role"] == "tool":
            message = {"role": "assistant", "content": f"The tool said: {last['content']}"}
            finish = "stop"
        else:
            name = body["tools"][0]["function"]["name"]
            message = {"role": "assistant", "content": None, "tool_calls": [{
                "id": "call_" + uuid.uuid4().hex[:8], "type": "function",
                "function": {"name": name, "arguments": '{"city": "Paris"}'}}]}
            finish = "tool_calls"
        usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        if not body.get("stream"):
            return Response(orjson.dumps({
                "id": rid, "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                "usage": usage}), media_type="application/json")

        async def events() -> Iterator[bytes]:  # type: ignore[misc]
            base = {"id": rid, "object": "chat.completion.chunk", "created": 0,
                    "model": body["model"]}
            delta = {k: v for k, v in message.items() if v is not None}
            if "tool_calls" in delta:
                delta["tool_calls"] = [{"index": 0, **delta["tool_calls"][0]}]
            yield b"data: " + orjson.dumps({**base, "choices": [
                {"index": 0, "delta": delta, "finish_reason": None}]}) + b"\n\n"
            yield b"data: " + orjson.dumps({**base, "choices": [
                {"index": 0, "delta": {}, "finish_reason": finish}]}) + b"\n\n"
            yield b"data: " + orjson.dumps({**base, "choices": [], "usage": usage}) + b"\n\n"
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


@pytest.fixture
def agent_gw(make_gateway: GatewayFactory) -> Iterator[Gateway]:
    upstream = ServerThread(_agent_upstream()).start()
    try:
        yield make_gateway(pool=[{"name": "agent-member", "kind": "openai", "model": "up",
                                  "base_url": upstream.url + "/v1",
                                  "price": {"input_per_1m": 1.0, "output_per_1m": 2.0}}])
    finally:
        upstream.stop()


@pytest.mark.parametrize("streamed", [False, True])
def test_openai_agents_runs_a_tool(agent_gw: Gateway, streamed: bool) -> None:
    out, calls = run_weather_agent(agent_gw.v1, agent_gw.admin_key, "agent-member", streamed)
    assert calls == ["Paris"]
    assert out == "The tool said: sunny in Paris"
    # one row per model call; the rows are written in batches, so wait for them
    assert agent_gw.latest_decision(2)["served_member"] == "agent-member"
    assert agent_gw.count_decisions() == 2
