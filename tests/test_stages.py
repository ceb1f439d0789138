"""The request path's stages, each run alone on an Exchange (gateway/stages.py), their order in
the proxy, and the typed decision row (store.DecisionRow) against the decisions table."""

from __future__ import annotations

import time
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from gateway import GatewayError, Principal
from gateway.proxy import Proxy
from gateway.routing_service import Analysis
from gateway.stages import BudgetStage, CacheStage, Exchange, RouteStage
from routing import Policy
from routing.cache import MemoryStore, SemanticCache, make_key
from store import Decision, DecisionRow
from telemetry import BudgetRule, Exceeded

TEAM = Principal(is_admin=False, team="t", key_id=7, key_prefix="gg-x", allowed_models=None)
BODY = {"model": "m", "messages": [{"role": "user", "content": "What is 2+2?"}],
        "temperature": 0}


def exchange(body: dict | None = None) -> Exchange:
    body = dict(body or BODY)
    x = Exchange("rid1", time.perf_counter(), "chat/completions", TEAM, body,
                 DecisionRow(id="rid1", endpoint="chat/completions"))
    x.analysis = Analysis(policy=Policy(), features={})
    x.row.features = x.analysis.features
    return x


def test_decision_row_has_exactly_the_tables_columns() -> None:
    assert {f.name for f in fields(DecisionRow)} == {c.name for c in Decision.__table__.columns}
    row = DecisionRow(id="a", endpoint="embeddings").as_row()
    assert row["status"] == 0 and row["attempts"] == [] and row["cost_usd"] is None


class _Metrics:
    def __init__(self) -> None:
        self.refused: list[tuple[str, str]] = []
        self.budget_rejections = self

    def labels(self, scope: str, metric: str) -> _Metrics:
        self.refused.append((scope, metric))
        return self

    def inc(self) -> None:
        pass


class _Budgets:
    def __init__(self, over: Exceeded | None = None, fail: bool = False) -> None:
        self.over, self.fail, self.asked = over, fail, []

    def check(self, team: str | None, key_id: int | None, rid: str) -> Exceeded | None:
        self.asked.append((team, key_id, rid))
        if self.fail:
            raise ConnectionError("counters away")
        return self.over


async def test_budget_stage_refuses_a_spent_budget_with_retry_after() -> None:
    rule = BudgetRule(1, "team", "t", "usd", "day", 1.0)
    over = Exceeded(rule, 1.25, datetime.now(UTC) + timedelta(hours=2))
    metrics = _Metrics()
    with pytest.raises(GatewayError) as info:
        await BudgetStage(_Budgets(over), metrics).run(exchange())  # type: ignore[arg-type]
    e = info.value
    assert e.status == 429 and e.code == "budget_exceeded" and "$1.250000" in e.message
    assert 7000 < int(e.headers["retry-after"]) <= 7200 and metrics.refused == [("team", "usd")]


async def test_budget_stage_passes_within_budget_and_when_counters_are_away() -> None:
    ok = _Budgets()
    assert await BudgetStage(ok, _Metrics()).run(exchange()) is None  # type: ignore[arg-type]
    assert ok.asked == [("t", 7, "rid1")]
    away = BudgetStage(_Budgets(fail=True), _Metrics())  # type: ignore[arg-type]
    assert await away.run(exchange()) is None  # serve rather than refuse everyone


async def test_route_stage_names_a_missing_model() -> None:
    pool = SimpleNamespace(get=lambda name: None)
    stage = RouteStage(SimpleNamespace(request_timeout_s=30.0), pool, None)  # type: ignore[arg-type]
    with pytest.raises(GatewayError) as info:
        await stage.run(exchange({**BODY, "model": "nope"}))
    assert info.value.status == 404 and info.value.code == "model_not_found"
    assert "'nope'" in info.value.message


def test_route_stage_deadline_is_the_shorter_of_member_and_request() -> None:
    stage = RouteStage(SimpleNamespace(request_timeout_s=30.0), None, None)  # type: ignore[arg-type]
    member = SimpleNamespace(cfg=SimpleNamespace(request_timeout_s=None))
    from gateway.stages import Plan

    plan = Plan([member], "requested", [])  # type: ignore[list-item]
    stage.set_deadline(plan, 100.0, 5)
    assert plan.budget_s == 5 and plan.deadline == 105.0
    stage.set_deadline(plan, 100.0, None)
    assert plan.budget_s == 30.0


async def test_cache_stage_answers_a_hit_and_finishes_its_row() -> None:
    cache = SemanticCache(MemoryStore())
    answer = {"id": "chatcmpl-old", "object": "chat.completion", "model": "up-m",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "4"}}],
              "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10}}
    cache.put(make_key(BODY, "t"), answer, "m")
    finished: list[DecisionRow] = []
    logged: list[Any] = []
    stage = CacheStage(cache, lambda row, p: finished.append(row),
                       lambda row, ep, body, text: logged.append(text))
    x = exchange()
    resp = await stage.run(x)
    assert resp is not None and resp.headers["x-greengate-cache"] == "exact"
    out = orjson.loads(resp.body)
    assert out["id"] == "chatcmpl-rid1" and out["choices"][0]["message"]["content"] == "4"
    row = finished[0]
    assert (row.served_member, row.status, row.cache_hit, row.cost_usd) == ("cache", 200, True, 0)
    assert row.prompt_tokens == 9 and row.energy_source.startswith("estimated")
    assert row.features["cache"]["kind"] == "exact" and logged == ["4"]


async def test_cache_stage_misses_and_skips() -> None:
    stage = CacheStage(SemanticCache(MemoryStore()), lambda *a: None, lambda *a: None)
    x = exchange()
    assert await stage.run(x) is None and x.cache_key is not None  # a miss: key kept to store
    hot = exchange({**BODY, "temperature": 1.5})  # too hot to cache: not even looked up
    assert await stage.run(hot) is None and hot.cache_key is None
    assert await CacheStage(None, lambda *a: None, lambda *a: None).run(exchange()) is None


def test_the_proxy_runs_the_stages_in_one_visible_order() -> None:
    none: Any = SimpleNamespace()
    proxy = Proxy(none, none, none, none, none, none, none, none, none, None)
    assert [s.name for s in proxy.stages] == ["features", "guard", "cache", "route", "budget",
                                              "call"]
