"""The semantic cache through the gateway: hits in the live format, isolation, persistence."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import openai

from tests.conftest import Gateway, GatewayFactory


def ask(gw: Gateway, text: str, key: str | None = None, **extra: Any) -> httpx.Response:
    body = {"model": "fake-small", "temperature": 0,
            "messages": [{"role": "user", "content": text}], **extra}
    r = gw.post("/v1/chat/completions", body, key=key)
    assert r.status_code == 200, r.text
    return r


def test_exact_hit_is_served_and_logged(gw: Gateway, fake) -> None:
    first = ask(gw, "What is the tallest mountain?")
    assert first.headers["x-greengate-member"] == "fake-small"
    hit = ask(gw, "What  is the tallest   mountain?")  # whitespace does not matter
    assert hit.headers["x-greengate-member"] == "cache"
    assert hit.headers["x-greengate-cache"] == "exact"
    assert hit.json()["choices"] == first.json()["choices"]
    assert hit.json()["id"] != first.json()["id"]
    assert len(fake.requests) == 1
    row = gw.decision(hit.headers["x-request-id"])
    assert row["cache_hit"] and row["served_member"] == "cache" and row["cost_usd"] == 0
    assert row["route_reason"] == "cache:exact"
    assert row["energy_source"] == "estimated:cache-cpu-time" and row["energy_j"] > 0
    assert row["completion_tokens"] == first.json()["usage"]["completion_tokens"]
    assert row["features"]["cache"]["member"] == "fake-small"


def test_stream_hit_uses_the_live_chunk_format(gw: Gateway, fake) -> None:
    sdk = openai.OpenAI(base_url=gw.v1, api_key=gw.admin_key, max_retries=0)
    kw = {"model": "fake-small", "temperature": 0, "stream": True,
          "stream_options": {"include_usage": True},
          "messages": [{"role": "user", "content": "stream and cache this"}]}
    live = list(sdk.chat.completions.create(**kw))
    with sdk.chat.completions.with_streaming_response.create(**kw) as raw:
        assert raw.headers["x-greengate-member"] == "cache"
        cached = list(raw.parse())
    text = lambda cs: "".join(c.choices[0].delta.content or "" for c in cs if c.choices)  # noqa: E731
    assert text(cached) == text(live) == "You said: stream and cache this"
    assert cached[-1].usage.completion_tokens == live[-1].usage.completion_tokens
    assert len(fake.requests) == 1


def test_teams_never_share_entries(gw: Gateway, fake) -> None:
    a, b = gw.create_key("team-a"), gw.create_key("team-b")
    ask(gw, "Shared question?", key=a)
    assert ask(gw, "Shared question?", key=a).headers["x-greengate-member"] == "cache"
    assert ask(gw, "Shared question?", key=b).headers["x-greengate-member"] == "fake-small"
    assert len(fake.requests) == 2


def test_what_is_never_cached(gw: Gateway, fake) -> None:
    for _ in range(2):  # OpenAI's default temperature (1) is too random to replay
        r = gw.post("/v1/chat/completions", {"model": "fake-small",
                                             "messages": [{"role": "user", "content": "hot"}]})
        assert r.headers["x-greengate-member"] == "fake-small"
    for _ in range(2):  # personal data: never cached
        assert ask(gw, "mail jane.doe@example.com").headers["x-greengate-member"] == "fake-small"
    assert len(fake.requests) == 4


def test_invalidate_and_survive_restart(make_gateway: GatewayFactory, fake,
                                        tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/cache.db"
    gw = make_gateway(database_url=db)
    ask(gw, "Remember me across restarts")
    gw.server.stop()
    gw2 = make_gateway(database_url=db)
    assert ask(gw2, "Remember me across restarts").headers["x-greengate-member"] == "cache"
    r = httpx.delete(gw2.url + "/admin/cache/_admin", headers=gw2.headers(), timeout=10)
    assert r.status_code == 200 and r.json()["invalidated"] == 1
    assert ask(gw2, "Remember me across restarts").headers["x-greengate-member"] == "fake-small"
