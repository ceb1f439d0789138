"""The whole spine on PostgreSQL: keys, requests and decision rows."""

from __future__ import annotations

import openai

from tests.conftest import GatewayFactory


def test_gateway_on_postgres(make_gateway: GatewayFactory, pg_url: str, fake) -> None:
    gw = make_gateway(database_url=pg_url)
    key = gw.create_key("pg-team", ["fake-small"])
    sdk = openai.OpenAI(base_url=gw.v1, api_key=key, max_retries=0)
    raw = sdk.chat.completions.with_raw_response.create(
        model="fake-small", messages=[{"role": "user", "content": "hello postgres"}])
    row = gw.decision(raw.headers["x-request-id"])
    assert row["team"] == "pg-team" and row["status"] == 200
    assert row["attempts"][0]["member"] == "fake-small"  # JSON column round-trips
    with sdk.chat.completions.with_streaming_response.create(
        model="fake-small", stream=True, messages=[{"role": "user", "content": "stream pg"}]
    ) as s:
        rid = s.headers["x-request-id"]
        list(s.parse())
    assert gw.decision(rid)["completion_tokens"] == 4
