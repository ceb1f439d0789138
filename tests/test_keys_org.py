"""Keys as organizations use them: expiry, metadata, allowed members, a budget and rpm/tpm
limits set at creation and enforced (429, retry-after, x-ratelimit-*), per key and per team,
in memory and through Redis; rotation with a grace period; PATCH and PUT of policies."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.conftest import Gateway, GatewayFactory

CHAT = {"model": "fake-small", "messages": [{"role": "user", "content": "hi"}]}


def _key(gw: Gateway, **fields: object) -> dict:
    r = gw.post("/admin/keys", {"team": fields.pop("team", "team-a"), **fields})
    assert r.status_code == 201, r.text
    return r.json()


def test_metadata_limits_and_budget_at_creation(gw: Gateway) -> None:
    k = _key(gw, metadata={"owner": "ada", "cost_center": "42"}, rpm_limit=5, tpm_limit=1000,
             allowed_models=["fake-small"], budget={"metric": "usd", "period": "month",
                                                    "limit": 3.5})
    assert k["metadata"] == {"owner": "ada", "cost_center": "42"}
    assert (k["rpm_limit"], k["tpm_limit"]) == (5, 1000)
    assert k["budget"]["scope"] == "key" and k["budget"]["subject"] == str(k["id"])
    listed = {x["id"]: x for x in httpx.get(gw.url + "/admin/keys",
                                            headers=gw.headers()).json()}
    assert listed[k["id"]]["metadata"]["owner"] == "ada"
    budgets = httpx.get(gw.url + "/admin/budgets", headers=gw.headers()).json()
    assert [b["limit"] for b in budgets if b["subject"] == str(k["id"])] == [3.5]
    r = gw.post("/v1/chat/completions", {**CHAT, "model": "fake-large"}, key=k["key"])
    assert r.status_code == 403


def test_expiry(gw: Gateway) -> None:
    k = _key(gw, duration_s=1)
    assert gw.post("/v1/chat/completions", CHAT, key=k["key"]).status_code == 200
    time.sleep(1.2)
    r = gw.post("/v1/chat/completions", CHAT, key=k["key"])
    assert r.status_code == 401 and r.json()["error"]["code"] == "expired_api_key"
    at = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    k2 = _key(gw, expires_at=at)
    assert datetime.fromisoformat(k2["expires_at"]) > datetime.now(UTC)


@pytest.mark.parametrize(("fields", "param"), [
    ({"rpm_limit": 0}, "rpm_limit"),
    ({"tpm_limit": 0}, "tpm_limit"),
    ({"duration_s": -5}, "duration_s"),
    ({"expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
    ({"expires_at": "tomorrow"}, "expires_at"),
    ({"expires_at": "2099-01-01T00:00:00Z", "duration_s": 60}, "duration_s"),
    ({"metadata": {"k": {"nested": 1}}}, "metadata"),
    ({"budget": {"metric": "usd", "period": "week", "limit": 1}}, "budget.period"),
    ({"allowed_models": ["nope"]}, "allowed_models"),
])
def test_bad_key_fields_create_nothing(gw: Gateway, fields: dict, param: str) -> None:
    before = len(httpx.get(gw.url + "/admin/keys", headers=gw.headers()).json())
    r = gw.post("/admin/keys", {"team": "team-z", **fields})
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["error"]["param"] == param, r.json()
    assert len(httpx.get(gw.url + "/admin/keys", headers=gw.headers()).json()) == before
    assert httpx.get(gw.url + "/admin/budgets", headers=gw.headers()).json() == []


def _limited(gw: Gateway, key: str, n: int) -> list[httpx.Response]:
    return [gw.post("/v1/chat/completions", CHAT, key=key) for _ in range(n)]


@pytest.mark.parametrize("redis", [False, True])
def test_rpm_limit_429(make_gateway: GatewayFactory, redis: bool) -> None:
    extra = {"redis_url": "redis://127.0.0.1:6379/0",
             "ratelimit_prefix": f"gg:test:{uuid.uuid4().hex}:"} if redis else {}
    gw = make_gateway(**extra)
    k = _key(gw, rpm_limit=2)
    first, second, third = _limited(gw, k["key"], 3)
    assert first.status_code == second.status_code == 200
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert second.headers["x-ratelimit-remaining-requests"] == "0"
    assert third.status_code == 429
    err = third.json()["error"]
    assert err["code"] == "rate_limit_exceeded" and err["param"] == "rpm_limit"
    assert int(third.headers["retry-after"]) >= 1
    assert third.headers["x-ratelimit-remaining-requests"] == "0"
    row = gw.decision(third.headers["x-request-id"])
    assert row["status"] == 429
    other = _key(gw, rpm_limit=2)  # another key of the same team is not limited by it
    assert gw.post("/v1/chat/completions", CHAT, key=other["key"]).status_code == 200


def test_tpm_limit(gw: Gateway) -> None:
    k = _key(gw, tpm_limit=3)
    ok = gw.post("/v1/chat/completions", CHAT, key=k["key"])
    assert ok.status_code == 200 and ok.headers["x-ratelimit-limit-tokens"] == "3"
    assert gw.decision(ok.headers["x-request-id"])["prompt_tokens"] > 0  # 1 + 3 tokens used
    r = gw.post("/v1/chat/completions", CHAT, key=k["key"])
    assert r.status_code == 429 and r.json()["error"]["param"] == "tpm_limit"
    assert r.headers["x-ratelimit-remaining-tokens"] == "0"


def test_team_limit(gw: Gateway) -> None:
    r = gw.post("/admin/teams", {"name": "capped", "rpm_limit": 1})
    assert r.status_code == 201, r.text
    a, b = _key(gw, team="capped"), _key(gw, team="capped")
    assert gw.post("/v1/chat/completions", CHAT, key=a["key"]).status_code == 200
    r = gw.post("/v1/chat/completions", CHAT, key=b["key"])
    assert r.status_code == 429 and "team capped" in r.json()["error"]["message"]
    p = httpx.patch(gw.url + "/admin/teams/capped", json={"rpm_limit": None},
                    headers=gw.headers())
    assert p.status_code == 200 and p.json()["rpm_limit"] is None
    assert gw.post("/v1/chat/completions", CHAT, key=b["key"]).status_code == 200


def test_rotation_with_grace(gw: Gateway) -> None:
    k = _key(gw)
    r = gw.post(f"/admin/keys/{k['id']}/rotate", {"grace_s": 1})
    assert r.status_code == 200, r.text
    new = r.json()
    assert new["id"] == k["id"] and new["key"] != k["key"]
    assert gw.post("/v1/chat/completions", CHAT, key=k["key"]).status_code == 200  # grace
    assert gw.post("/v1/chat/completions", CHAT, key=new["key"]).status_code == 200
    time.sleep(1.2)
    old = gw.post("/v1/chat/completions", CHAT, key=k["key"])
    assert old.status_code == 401 and old.json()["error"]["code"] == "rotated_api_key"
    assert gw.post("/v1/chat/completions", CHAT, key=new["key"]).status_code == 200
    now = gw.post(f"/admin/keys/{k['id']}/rotate", {"grace_s": 0}).json()
    assert gw.post("/v1/chat/completions", CHAT, key=new["key"]).status_code == 401
    assert gw.post("/v1/chat/completions", CHAT, key=now["key"]).status_code == 200
    gw.post("/admin/keys", {"team": "t"})
    assert httpx.delete(gw.url + f"/admin/keys/{k['id']}",
                        headers=gw.headers()).status_code == 200
    r = gw.post(f"/admin/keys/{k['id']}/rotate", {})
    assert r.status_code == 409


def test_policy_patch_keeps_other_fields_and_put_replaces(gw: Gateway) -> None:
    put = httpx.put(gw.url + "/admin/policies/team-a", headers=gw.headers(),
                    json={"allowed_members": ["fake-small", "fake-large"],
                          "fallback_order": ["fake-large"]})
    assert put.status_code == 200, put.text
    assert "replaced" in put.headers["x-greengate-policy"]
    patch = httpx.patch(gw.url + "/admin/policies/team-a", headers=gw.headers(),
                        json={"fallback_order": ["fake-small"]})
    assert patch.status_code == 200, patch.text
    got = httpx.get(gw.url + "/admin/policies/team-a", headers=gw.headers()).json()
    assert got["allowed_members"] == ["fake-small", "fake-large"]
    assert got["fallback_order"] == ["fake-small"]
    bad = httpx.patch(gw.url + "/admin/policies/team-a", headers=gw.headers(),
                      json={"allowed_members": ["nope"]})
    assert bad.status_code == 400
    unknown = httpx.patch(gw.url + "/admin/policies/team-a", headers=gw.headers(),
                          json={"no_such_field": 1})
    assert unknown.status_code == 422 and unknown.json()["error"]["param"] == "no_such_field"
    again = httpx.get(gw.url + "/admin/policies/team-a", headers=gw.headers()).json()
    assert again == got  # nothing half-applied
