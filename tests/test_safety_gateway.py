"""PII handling through the gateway: redaction round trips, blocking and routing by tag."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai

from tests.conftest import Gateway, GatewayFactory, default_pool

EMAIL = "jane.doe@example.com"
CARD = "4111 1111 1111 1111"
TEXT = f"Please write to {EMAIL} about card {CARD} today"


def set_policy(gw: Gateway, team: str, **policy: Any) -> None:
    r = httpx.put(f"{gw.url}/admin/policies/{team}", json=policy, headers=gw.headers(),
                  timeout=10)
    assert r.status_code == 200, r.text


def test_redaction_round_trip(gw: Gateway, fake) -> None:
    set_policy(gw, "default", safety={"pii_action": "redact"})
    sdk = openai.OpenAI(base_url=gw.v1, api_key=gw.admin_key, max_retries=0)
    raw = sdk.chat.completions.with_raw_response.create(
        model="fake-small", messages=[{"role": "user", "content": TEXT}])
    answer = raw.parse().choices[0].message.content
    assert answer == f"You said: {TEXT}"  # restored for the client
    seen = fake.requests[-1]["body"]["messages"][0]["content"]
    assert EMAIL not in seen and "4111" not in seen  # the upstream never saw the data
    assert "<EMAIL_ADDRESS_1>" in seen and "<CREDIT_CARD_1>" in seen
    row = gw.decision(raw.headers["x-request-id"])
    assert row["features"]["safety"]["pii"] == {"EMAIL_ADDRESS": 1, "CREDIT_CARD": 1}
    assert row["features"]["safety"]["actions"] == ["redact:pii"]
    assert row["features"]["flags"] == ["pii"]
    assert len(row["features"]["prompt_sha256"]) == 64 and "prompt" not in row["features"]
    assert EMAIL not in json.dumps(row, default=str)  # the mapping stays out of every log

    stream = sdk.chat.completions.create(
        model="fake-small", stream=True, messages=[{"role": "user", "content": TEXT}])
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == f"You said: {TEXT}"


def test_block_names_the_kind_not_the_data(gw: Gateway, fake) -> None:
    set_policy(gw, "default", safety={"pii_action": "block"})
    r = gw.post("/v1/chat/completions", {"model": "fake-small",
                                         "messages": [{"role": "user", "content": TEXT}]})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "pii_blocked"
    assert "EMAIL_ADDRESS" in err["message"] and "CREDIT_CARD" in err["message"]
    assert EMAIL not in err["message"] and "4111" not in err["message"]
    assert fake.requests == []
    clean = gw.post("/v1/chat/completions", {"model": "fake-small",
                                             "messages": [{"role": "user", "content": "hi"}]})
    assert clean.status_code == 200
    assert gw.decision(clean.headers["x-request-id"])["features"]["safety"]["pii"] == {}


def test_route_only_to_pii_safe_members(make_gateway: GatewayFactory, fake,
                                        fake_url: str) -> None:
    pool = default_pool(fake_url)
    pool[1]["tags"] = ["pii-safe"]  # fake-large is trusted with personal data
    gw = make_gateway(pool)
    set_policy(gw, "default", safety={"pii_action": "route"})
    r = gw.post("/v1/chat/completions", {"model": "auto",
                                         "messages": [{"role": "user", "content": TEXT}]})
    assert r.status_code == 200 and r.headers["x-greengate-member"] == "fake-large"
    # Without personal data, 'auto' still prefers the cheaper member.
    r = gw.post("/v1/chat/completions", {"model": "auto",
                                         "messages": [{"role": "user", "content": "hello"}]})
    assert r.headers["x-greengate-member"] == "fake-small"
    r = gw.post("/v1/chat/completions", {"model": "fake-small",
                                         "messages": [{"role": "user", "content": TEXT}]})
    assert r.status_code == 403 and r.json()["error"]["code"] == "no_member_for_flag"


def test_prompts_stored_only_when_the_policy_allows(gw: Gateway, fake) -> None:
    set_policy(gw, "default", store_prompts=True)
    r = gw.post("/v1/chat/completions", {"model": "fake-small",
                                         "messages": [{"role": "user", "content": "keep me"}]})
    assert gw.decision(r.headers["x-request-id"])["features"]["prompt"] == "keep me"
