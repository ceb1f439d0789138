"""The OpenAI protocol through greengate, driven by the official SDK, each request's row checked."""

from __future__ import annotations

import json

import openai
import pytest

from routing import tokens
from tests.conftest import Gateway

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]},
    },
}


def client(gw: Gateway, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.v1, api_key=key or gw.admin_key, max_retries=0)


def test_chat_non_stream_row_is_exact(gw: Gateway, fake) -> None:
    raw = client(gw).chat.completions.with_raw_response.create(
        model="fake-small", messages=[{"role": "user", "content": "hello there gateway"}])
    resp = raw.parse()
    rid = raw.headers["x-request-id"]
    assert resp.choices[0].message.content == "You said: hello there gateway"
    assert raw.headers["x-greengate-member"] == "fake-small"
    # The upstream saw its own model name and the member's key, not the client's.
    assert fake.requests[-1]["body"]["model"] == "up-small"
    assert fake.requests[-1]["auth"] == "Bearer sk-upstream-secret"

    row = gw.decision(rid)
    assert row["status"] == 200
    assert row["team"] is None and row["key_prefix"] == "admin"
    assert row["requested_model"] == "fake-small"
    assert row["served_member"] == "fake-small"
    assert row["route_reason"] == "requested"
    assert row["prompt_tokens"] == resp.usage.prompt_tokens == 3
    assert row["completion_tokens"] == resp.usage.completion_tokens == 5
    assert row["usage_source"] == "upstream"
    assert row["cost_usd"] == pytest.approx((3 * 0.5 + 5 * 1.5) / 1e6)
    assert row["energy_j"] == pytest.approx(5 * 0.3)
    assert row["energy_source"] == "estimated:declared-j-per-token"
    assert row["latency_ms"] > 0 and not row["stream"] and not row["cache_hit"]


async def test_async_client(gw: Gateway, fake) -> None:
    ac = openai.AsyncOpenAI(base_url=gw.v1, api_key=gw.admin_key, max_retries=0)
    raw = await ac.chat.completions.with_raw_response.create(
        model="fake-large", messages=[{"role": "user", "content": "async please"}])
    resp = raw.parse()
    assert resp.choices[0].message.content == "You said: async please"
    row = gw.decision(raw.headers["x-request-id"])
    assert row["served_member"] == "fake-large"
    assert row["cost_usd"] == pytest.approx((2 * 3.0 + 4 * 15.0) / 1e6)
    assert row["energy_j"] is None  # fake-large declares no energy profile: nothing invented
    await ac.close()


def test_stream_usage_asked_upstream_and_stripped_for_client(gw: Gateway, fake) -> None:
    with client(gw).chat.completions.with_streaming_response.create(
        model="fake-small", stream=True,
        messages=[{"role": "user", "content": "stream me some words"}],
    ) as raw:
        rid = raw.headers["x-request-id"]
        chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "You said: stream me some words"
    assert all(c.usage is None for c in chunks)  # the client did not ask for usage
    assert fake.requests[-1]["body"]["stream_options"] == {"include_usage": True}
    row = gw.decision(rid)
    assert row["stream"] and row["status"] == 200
    assert (row["prompt_tokens"], row["completion_tokens"]) == (4, 6)
    assert row["usage_source"] == "upstream"
    assert row["ttft_ms"] is not None and row["ttft_ms"] <= row["latency_ms"]


def test_stream_include_usage_honoured(gw: Gateway, fake) -> None:
    stream = client(gw).chat.completions.create(
        model="fake-small", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "count me"}])
    chunks = list(stream)
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == 2 and chunks[-1].usage.completion_tokens == 4
    row = gw.latest_decision(1)
    assert row["stream"] and (row["prompt_tokens"], row["completion_tokens"]) == (2, 4)


def test_tools_non_stream(gw: Gateway, fake) -> None:
    resp = client(gw).chat.completions.create(
        model="fake-small", tools=[WEATHER_TOOL], tool_choice="auto",
        messages=[{"role": "user", "content": "weather in Paris?"}])
    call = resp.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris", "unit": "celsius"}
    sent = fake.requests[-1]["body"]
    assert sent["tools"] == [WEATHER_TOOL] and sent["tool_choice"] == "auto"
    row = gw.latest_decision(1)
    assert row["status"] == 200 and row["completion_tokens"] == resp.usage.completion_tokens


def test_tool_call_deltas_streamed_intact(gw: Gateway, fake) -> None:
    stream = client(gw).chat.completions.create(
        model="fake-small", stream=True, tools=[WEATHER_TOOL],
        messages=[{"role": "user", "content": "weather in Paris?"}])
    name, args, ids = "", "", set()
    finish = None
    for c in stream:
        if not c.choices:
            continue
        for tc in c.choices[0].delta.tool_calls or []:
            if tc.id:
                ids.add(tc.id)
            if tc.function and tc.function.name:
                name += tc.function.name
            if tc.function and tc.function.arguments:
                args += tc.function.arguments
        finish = c.choices[0].finish_reason or finish
    assert name == "get_weather" and len(ids) == 1
    assert json.loads(args) == {"city": "Paris", "unit": "celsius"}
    assert finish == "tool_calls"
    row = gw.latest_decision(1)
    assert row["stream"] and row["status"] == 200 and row["usage_source"] == "upstream"


def test_response_format_passed_through(gw: Gateway, fake) -> None:
    client(gw).chat.completions.create(
        model="fake-small", response_format={"type": "json_object"}, temperature=0.2, seed=7,
        messages=[{"role": "user", "content": "json please"}])
    sent = fake.requests[-1]["body"]
    assert sent["response_format"] == {"type": "json_object"}
    assert sent["temperature"] == 0.2 and sent["seed"] == 7
    assert gw.latest_decision(1)["status"] == 200


def test_missing_usage_counted_non_stream(gw: Gateway, fake) -> None:
    fake.omit_usage = True
    messages = [{"role": "system", "content": "be brief"},
                {"role": "user", "content": "no usage from upstream here"}]
    raw = client(gw).chat.completions.with_raw_response.create(
        model="fake-small", messages=messages)
    resp = raw.parse()
    row = gw.decision(raw.headers["x-request-id"])
    assert row["usage_source"] == "counted:tiktoken"
    assert row["prompt_tokens"] == tokens.count_messages(messages, "up-small")
    assert row["completion_tokens"] == tokens.count_text(
        "You said: no usage from upstream here", "up-small")
    assert resp.usage.completion_tokens == row["completion_tokens"]
    assert row["cost_usd"] > 0


def test_missing_usage_counted_stream(gw: Gateway, fake) -> None:
    fake.omit_usage = True
    messages = [{"role": "user", "content": "stream without any usage"}]
    with client(gw).chat.completions.with_streaming_response.create(
        model="fake-small", stream=True, stream_options={"include_usage": True},
        messages=messages,
    ) as raw:
        rid = raw.headers["x-request-id"]
        chunks = list(raw.parse())
    row = gw.decision(rid)
    expected = tokens.count_text("You said: stream without any usage", "up-small")
    assert row["usage_source"] == "counted:tiktoken"
    assert row["completion_tokens"] == expected
    assert row["prompt_tokens"] == tokens.count_messages(messages, "up-small")
    # The client asked for usage, so it gets our count rather than nothing.
    assert chunks[-1].usage.completion_tokens == expected
    assert row["cost_usd"] == pytest.approx(
        (row["prompt_tokens"] * 0.5 + expected * 1.5) / 1e6)


def test_legacy_completions(gw: Gateway, fake) -> None:
    c = client(gw)
    raw = c.completions.with_raw_response.create(model="fake-small", prompt="complete this")
    assert raw.parse().choices[0].text == "You said: complete this"
    row = gw.decision(raw.headers["x-request-id"])
    assert row["endpoint"] == "completions" and row["completion_tokens"] == 4
    text = "".join(ch.choices[0].text for ch in
                   c.completions.create(model="fake-small", prompt="stream it", stream=True)
                   if ch.choices)
    assert text == "You said: stream it"
    row = gw.latest_decision(2)
    assert row["endpoint"] == "completions" and row["stream"] and row["completion_tokens"] == 4


def test_embeddings(gw: Gateway, fake) -> None:
    raw = client(gw).embeddings.with_raw_response.create(
        model="fake-embed", input=["one two", "three"])
    resp = raw.parse()
    assert len(resp.data) == 2 and len(resp.data[0].embedding) == 8
    row = gw.decision(raw.headers["x-request-id"])
    assert row["endpoint"] == "embeddings" and row["prompt_tokens"] == 3
    assert row["served_member"] == "fake-embed"


def test_models_lists_members_and_auto(gw: Gateway) -> None:
    ids = [m.id for m in client(gw).models.list()]
    assert ids[0] == "auto"
    assert {"fake-small", "fake-large", "fake-embed", "dead", "lite"} <= set(ids)


def test_auto_picks_cheapest_healthy_allowed(gw: Gateway, fake) -> None:
    key = gw.create_key("team-auto", ["fake-small", "fake-large"])
    raw = client(gw, key).chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "route me"}])
    row = gw.decision(raw.headers["x-request-id"])
    assert row["requested_model"] == "auto" and row["served_member"] == "fake-small"
    assert row["route_reason"] == "auto:cheapest"
    assert [c["member"] for c in row["candidates"]] == ["fake-small", "fake-large"]
    assert row["team"] == "team-auto"


def test_litellm_member(gw: Gateway, fake) -> None:
    """A litellm member reaches its provider through litellm (here: the fake, as 'openai/')."""
    c = client(gw)
    raw = c.chat.completions.with_raw_response.create(
        model="lite", messages=[{"role": "user", "content": "through litellm"}])
    assert raw.parse().choices[0].message.content == "You said: through litellm"
    assert fake.requests[-1]["body"]["model"] == "up-lite"
    row = gw.decision(raw.headers["x-request-id"])
    assert row["served_member"] == "lite" and row["prompt_tokens"] == 2
    text = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
        model="lite", stream=True, messages=[{"role": "user", "content": "stream lite"}])
        if ch.choices)
    assert text == "You said: stream lite"
    row = gw.latest_decision(2)
    assert row["served_member"] == "lite" and row["stream"] and row["status"] == 200
    assert row["completion_tokens"] == 4


def test_langchain_chat_openai(gw: Gateway, fake) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=gw.v1, api_key=gw.admin_key, model="fake-small", max_retries=0)
    assert llm.invoke("hi from langchain").content == "You said: hi from langchain"
    streamed = "".join(str(part.content) for part in llm.stream("stream from langchain"))
    assert streamed == "You said: stream from langchain"
    row = gw.latest_decision(2)
    assert row["stream"] and row["served_member"] == "fake-small" and row["status"] == 200
