"""Budgets, carbon, counterfactual savings and Prometheus metrics through the gateway."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import httpx
import pytest
import redis

from telemetry.budgets import BudgetRule, Budgets, MemoryCounters, RedisCounters, period_bounds
from telemetry.carbon import CarbonIntensity
from tests.conftest import Gateway, GatewayFactory, default_pool

MSG = [{"role": "user", "content": "one two three"}]  # the fake reports 3 prompt tokens


def chat(gw: Gateway, key: str, model: str = "fake-small", stream: bool = False) -> httpx.Response:
    return gw.post("/v1/chat/completions", {"model": model, "messages": MSG, "stream": stream},
                   key=key)


def test_period_bounds() -> None:
    now = datetime(2026, 2, 14, 15, 30, tzinfo=UTC)
    assert period_bounds("day", now) == (datetime(2026, 2, 14, tzinfo=UTC),
                                         datetime(2026, 2, 15, tzinfo=UTC))
    assert period_bounds("month", now) == (datetime(2026, 2, 1, tzinfo=UTC),
                                           datetime(2026, 3, 1, tzinfo=UTC))


def test_budget_logic_and_period_reset() -> None:
    b = Budgets(MemoryCounters())
    b.rules = [BudgetRule(1, "team", "a", "usd", "day", 1.0),
               BudgetRule(2, "key", "7", "wh", "month", 2.0)]
    day1 = datetime(2026, 5, 1, 10, tzinfo=UTC)
    b.charge("a", 7, 0.6, 3600.0, now=day1)  # 1 Wh
    assert b.check("a", 7, now=day1) is None
    b.charge("a", 7, 0.5, 3600.0, now=day1)
    over = b.check("a", 7, now=day1)
    assert over is not None and over.rule.id == 1 and over.spent == pytest.approx(1.1)
    assert over.resets_at == datetime(2026, 5, 2, tzinfo=UTC)
    assert b.check("other", 8, now=day1) is None
    day2 = datetime(2026, 5, 2, 0, 1, tzinfo=UTC)  # the daily dollars reset, the Wh do not
    over = b.check("a", 7, now=day2)
    assert over is not None and over.rule.id == 2 and over.spent == pytest.approx(2.0)


def test_redis_counters_are_shared() -> None:
    url = "redis://127.0.0.1:6379/0"
    rule = BudgetRule(1, "team", "t-" + uuid.uuid4().hex, "usd", "day", 1.0)
    a, b = Budgets(RedisCounters(url)), Budgets(RedisCounters(url))
    a.rules = b.rules = [rule]
    a.seed(rule, 0.25)
    b.seed(rule, 99.0)  # already seeded by the first replica: kept
    a.charge(rule.subject, None, 0.5, None)
    b.charge(rule.subject, None, 0.3, None)
    assert a.spent(rule) == pytest.approx(1.05) == b.spent(rule)
    assert b.check(rule.subject, None) is not None
    start, _ = period_bounds("day", datetime.now(UTC))
    r = redis.Redis.from_url(url)
    key = f"gg:budget:team:{rule.subject}:usd:day:{start:%Y%m%d}"
    assert 0 < r.ttl(key) <= 25 * 3600
    r.delete(key)


@pytest.mark.parametrize("stream", [False, True])
def test_budget_refuses_with_429_after_it_is_spent(gw: Gateway, fake, stream: bool) -> None:
    key = gw.create_key("frugal")
    # fake-small: 3 prompt + 5 completion tokens at $0.5/$1.5 per 1M = $0.000009 per call.
    r = gw.post("/admin/budgets", {"scope": "team", "subject": "frugal", "metric": "usd",
                                   "period": "day", "limit": 0.000015})
    assert r.status_code == 201, r.text
    assert chat(gw, key, stream=stream).status_code == 200
    assert chat(gw, key, stream=stream).status_code == 200  # $0.000009 spent < $0.000015
    refused = chat(gw, key, stream=stream)
    assert refused.status_code == 429
    err = refused.json()["error"]
    assert err["code"] == "budget_exceeded"
    assert "daily $1.5e-05 budget of team 'frugal'" in err["message"]
    assert "resets at" in err["message"] and int(refused.headers["retry-after"]) > 0
    assert len(fake.requests) == 2  # the refused request never reached the upstream
    assert gw.decision(refused.headers["x-request-id"])["status"] == 429
    listed = httpx.get(gw.url + "/admin/budgets", headers=gw.headers(), timeout=10).json()
    assert listed[0]["spent"] == pytest.approx(0.000018)
    other = gw.create_key("rich")
    assert chat(gw, other).status_code == 200


def test_energy_budget_per_key_survives_restart(make_gateway: GatewayFactory, fake,
                                                tmp_path) -> None:
    db = f"sqlite:///{tmp_path}/budget.db"
    gw = make_gateway(database_url=db)
    key = gw.create_key("wh-team")
    key_id = httpx.get(gw.url + "/admin/keys", headers=gw.headers(), timeout=10).json()[0]["id"]
    # fake-small declares 0.3 J per output token: 5 tokens = 1.5 J = 0.000417 Wh per call.
    assert gw.post("/admin/budgets", {"scope": "key", "subject": str(key_id), "metric": "wh",
                                      "period": "month", "limit": 0.0008}).status_code == 201
    assert chat(gw, key).status_code == 200
    gw.server.stop()
    gw2 = make_gateway(database_url=db)  # counters start again from the decision log
    assert chat(gw2, key).status_code == 200
    assert chat(gw2, key).status_code == 429


def test_carbon_and_counterfactual_in_the_row(make_gateway: GatewayFactory, fake,
                                              fake_url: str) -> None:
    pool = default_pool(fake_url)
    pool[0]["energy"]["region"] = "eu-north"
    pool[1]["energy"] = {"j_per_token": 2.0, "source": "test"}
    gw = make_gateway(pool, carbon_regions={"eu-north": 36.0})
    r = gw.post("/v1/chat/completions", {"model": "auto", "messages": MSG})
    row = gw.decision(r.headers["x-request-id"])
    assert row["served_member"] == "fake-small"
    assert row["energy_j"] == pytest.approx(1.5)
    assert row["gco2e"] == pytest.approx(1.5 / 3.6e6 * 36.0)
    # Counterfactual: the team's most capable (priciest) chat member, same tokens.
    assert row["counterfactual_member"] == "fake-large"  # $3 + $15 per 1M: the priciest
    assert row["counterfactual_cost_usd"] == pytest.approx((3 * 3.0 + 5 * 15.0) / 1e6)
    assert row["counterfactual_energy_j"] == pytest.approx(5 * 2.0)
    named = gw.post("/v1/chat/completions", {"model": "fake-small", "messages": MSG})
    assert gw.decision(named.headers["x-request-id"])["counterfactual_member"] is None


def test_carbon_intensity_defaults() -> None:
    c = CarbonIntensity(480.0, {"fr": 56.0})
    assert c.gco2e(3.6e6, None) == pytest.approx(480.0)
    assert c.gco2e(3.6e6, "fr") == pytest.approx(56.0)
    assert c.gco2e(None, "fr") is None


def test_prometheus_metrics(gw: Gateway, fake) -> None:
    chat(gw, gw.admin_key)
    chat(gw, gw.admin_key, model="auto", stream=True)
    gw.post("/v1/chat/completions", {"model": "nope", "messages": MSG})
    text = httpx.get(gw.url + "/metrics", timeout=10).text
    assert 'greengate_requests_total{endpoint="chat/completions",member="fake-small",' \
           'status="200"} 2.0' in text
    assert 'greengate_requests_total{endpoint="chat/completions",member="none",' \
           'status="404"} 1.0' in text
    assert 'greengate_energy_joules_total{member="fake-small",' \
           'source="estimated:declared-j-per-token"} 3.0' in text
    assert 'greengate_tokens_total{kind="completion",member="fake-small"} 10.0' in text
    assert 'greengate_routing_choices_total{member="fake-small",reason="auto:cheapest"} 1.0' \
        in text
    assert 'greengate_queue_depth{queue="decision_log"}' in text
    assert "greengate_request_latency_seconds_bucket" in text


def test_a_budget_for_a_team_or_key_that_does_not_exist_is_refused(gw: Gateway) -> None:
    # A typo must not create a budget that is never spent and never says so.
    r = gw.post("/admin/budgets", {"scope": "team", "subject": "reserch", "metric": "usd",
                                   "period": "day", "limit": 5})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "team_not_found" and err["param"] == "subject"
    assert "reserch" in err["message"] and "/admin/teams" in err["message"]
    r = gw.post("/admin/budgets", {"scope": "key", "subject": "999999", "metric": "usd",
                                   "period": "day", "limit": 5})
    assert r.status_code == 400 and r.json()["error"]["code"] == "key_not_found"
    assert httpx.get(gw.url + "/admin/budgets", headers=gw.headers(), timeout=10).json() == []
    gw.create_key("research")
    r = gw.post("/admin/budgets", {"scope": "team", "subject": "research", "metric": "usd",
                                   "period": "day", "limit": 5})
    assert r.status_code == 201, r.text
