"""GET /v1/reports/usage against hand-computed figures, on SQLite and on PostgreSQL alike.

Decision rows are seeded straight into the gateway's (migrated) database, so every figure below
can be worked out by hand from SEED."""

from __future__ import annotations

import csv
import io
import math
import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from store.schema import Decision
from telemetry.reports import (
    HIST_BUCKETS_PER_DOUBLING,
    SQLITE_PERCENTILE_RESOLUTION,
    ReportQuery,
    hist_percentiles,
    report_columns,
    usage_report,
)
from tests.conftest import Gateway

START, END = "2026-03-01T00:00:00Z", "2026-03-03T00:00:00Z"


def at(s: str) -> datetime:
    return datetime.fromisoformat(s).replace(tzinfo=UTC)


def row(created: str, **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {c.name: None for c in Decision.__table__.columns}
    base.update(id=uuid.uuid4().hex, created_at=at(created), endpoint="chat/completions",
                stream=False, status=200, cache_hit=False)
    base.update(kw)
    return base


def alpha(key: int, **kw: Any) -> dict[str, Any]:
    return {"team": "alpha", "key_id": key, "key_prefix": f"gg-key{key}", **kw}


# Team alpha: keys 1 and 2; team beta: key 3; one admin request; two rows just outside
# [START, END) whose huge figures would show if the range leaked.
SEED = [
    row("2026-03-01 10:00:00", **alpha(1), requested_model="small", served_member="small",
        route_reason="requested", latency_ms=100.0, prompt_tokens=10, completion_tokens=20,
        cost_usd=0.001, energy_j=2.0, energy_source="measured:nvml", gco2e=0.1),
    row("2026-03-01 11:30:00", **alpha(1), requested_model="auto", served_member="small",
        route_reason="auto:cheapest", latency_ms=200.0, prompt_tokens=30, completion_tokens=40,
        cost_usd=0.002, energy_j=6.0, energy_source="estimated:declared-j-per-token",
        gco2e=0.3, counterfactual_member="large", counterfactual_cost_usd=0.010,
        counterfactual_energy_j=20.0),
    # Output tokens but no energy figure: must not dilute J per output token.
    row("2026-03-02 09:00:00", **alpha(2), requested_model="auto", served_member="large",
        route_reason="auto:cheapest", latency_ms=300.0, prompt_tokens=50, completion_tokens=60,
        cost_usd=0.02, counterfactual_member="large", counterfactual_cost_usd=0.02,
        counterfactual_energy_j=15.0),
    row("2026-03-02 12:00:00", **alpha(2), requested_model="small", served_member="small",
        route_reason="requested", status=502, latency_ms=50.0, error="upstream 502"),
    row("2026-03-01 13:00:00", team="beta", key_id=3, key_prefix="gg-key3",
        requested_model="large", served_member="large", route_reason="requested",
        latency_ms=400.0, prompt_tokens=100, completion_tokens=100, cost_usd=0.05,
        energy_j=10.0, energy_source="measured:rapl", gco2e=0.5, cache_hit=True),
    row("2026-03-02 23:59:59.999", team="beta", key_id=3, key_prefix="gg-key3",
        requested_model="auto", served_member="small", route_reason="auto:cheapest",
        latency_ms=500.0, prompt_tokens=5, completion_tokens=10, cost_usd=0.0005,
        energy_j=1.0, energy_source="estimated:llm-energy-model", gco2e=0.05,
        counterfactual_member="large", counterfactual_cost_usd=0.003,
        counterfactual_energy_j=4.0),
    row("2026-03-01 15:00:00", key_prefix="admin", requested_model="small",
        served_member="small", route_reason="requested", latency_ms=600.0, prompt_tokens=1,
        completion_tokens=2, cost_usd=0.0001, energy_j=0.5, energy_source="measured:nvml",
        gco2e=0.02),
    row("2026-02-28 23:59:59.999", **alpha(1), requested_model="small", served_member="small",
        latency_ms=9e6, prompt_tokens=10**6, completion_tokens=10**6, cost_usd=1e3,
        energy_j=1e6, energy_source="measured:nvml"),
    row("2026-03-03 00:00:00", team="beta", key_id=3, requested_model="small",
        served_member="small", latency_ms=9e6, prompt_tokens=10**6, completion_tokens=10**6,
        cost_usd=1e3, energy_j=1e6, energy_source="measured:nvml"),
]


def seed(gw: Gateway, rows: list[dict[str, Any]]) -> None:
    with gw.engine.begin() as conn:
        conn.execute(sa.insert(Decision), rows)


@pytest.fixture(params=["sqlite", "postgresql"])
def rgw(request: pytest.FixtureRequest) -> Gateway:
    """A migrated gateway on each database, seeded with SEED."""
    # pg_url first, so that its schema outlives the gateway using it.
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    gw = request.getfixturevalue("make_gateway")(database_url=url)
    seed(gw, SEED)
    return gw


def get(gw: Gateway, key: str | None = "admin", **params: Any) -> httpx.Response:
    headers = {} if key is None else gw.headers(None if key == "admin" else key)
    return httpx.get(gw.url + "/v1/reports/usage", params=params, headers=headers, timeout=30)


def report(gw: Gateway, key: str | None = "admin", **params: Any) -> dict[str, Any]:
    r = get(gw, key, **{"start": START, "end": END, **params})
    assert r.status_code == 200, r.text
    return r.json()


def pct_tol(gw: Gateway) -> float:
    """Relative tolerance on latency percentiles: exact on PostgreSQL, bucketed on SQLite."""
    return SQLITE_PERCENTILE_RESOLUTION if gw.engine.dialect.name == "sqlite" else 1e-9


def approx(x: float) -> Any:
    return pytest.approx(x, rel=1e-9, abs=1e-12)


def test_totals_hand_computed(rgw: Gateway) -> None:
    body = report(rgw)
    assert body["start"] == START and body["end"] == END and body["group_by"] == []
    assert body["energy_note"] == "energy_j carries its source; estimated figures are estimates"
    t = body["totals"]
    assert body["rows"] == [t]  # no grouping: the one row is the totals row
    assert t["requests"] == 7 and t["errors"] == 1 and t["cache_hits"] == 1
    assert (t["input_tokens"], t["output_tokens"]) == (196, 232)
    assert t["cost_usd"] == approx(0.0736)
    assert t["energy_j"] == approx(19.5)
    assert t["energy_wh"] == approx(19.5 / 3600)
    assert t["gco2e"] == approx(0.97)
    # 19.5 J over the 172 output tokens of rows that have an energy figure (not 232).
    assert t["j_per_output_token"] == approx(19.5 / 172)
    assert t["measured_energy_share"] == approx(12.5 / 19.5)
    assert t["estimated_energy_share"] == approx(7.0 / 19.5)
    # Counterfactuals: the three 'auto' rows.
    assert t["counterfactual_requests"] == 3
    assert t["counterfactual_cost_usd"] == approx(0.033)
    assert t["cost_saved_usd"] == approx((0.010 - 0.002) + (0.02 - 0.02) + (0.003 - 0.0005))
    assert t["counterfactual_energy_j"] == approx(39.0)
    assert t["energy_saved_j"] == approx((20.0 - 6.0) + (4.0 - 1.0))  # no energy: no saving
    # Latencies 50 100 200 300 400 500 600: percentile_cont gives 300, 570, 594.
    tol = pct_tol(rgw)
    assert t["latency_p50_ms"] == pytest.approx(300.0, rel=tol)
    assert t["latency_p95_ms"] == pytest.approx(570.0, rel=tol)
    assert t["latency_p99_ms"] == pytest.approx(594.0, rel=tol)


def test_group_by_team(rgw: Gateway) -> None:
    body = report(rgw, group_by="team")
    rows = {r["team"]: r for r in body["rows"]}
    # Admin-key traffic is named, and last.
    assert [r["team"] for r in body["rows"]] == ["alpha", "beta", "(admin key)"]
    a, b = rows["alpha"], rows["beta"]
    assert (a["requests"], a["errors"], a["input_tokens"], a["output_tokens"]) == (4, 1, 90, 120)
    assert a["cost_usd"] == approx(0.023) and a["energy_j"] == approx(8.0)
    assert a["j_per_output_token"] == approx(8.0 / 60)
    assert a["measured_energy_share"] == approx(0.25)
    assert a["estimated_energy_share"] == approx(0.75)
    assert a["cost_saved_usd"] == approx(0.008) and a["energy_saved_j"] == approx(14.0)
    assert a["latency_p50_ms"] == pytest.approx(150.0, rel=pct_tol(rgw))
    assert (b["requests"], b["cache_hits"], b["errors"]) == (2, 1, 0)
    assert b["cost_usd"] == approx(0.0505) and b["energy_j"] == approx(11.0)
    assert b["measured_energy_share"] == approx(10 / 11)
    assert rows["(admin key)"]["requests"] == 1
    assert body["totals"]["requests"] == 7
    assert body["totals"]["cost_usd"] == approx(0.0736)


def test_group_by_day_and_hour(rgw: Gateway) -> None:
    days = report(rgw, group_by="day")["rows"]
    assert [(r["day"], r["requests"]) for r in days] == [("2026-03-01", 4), ("2026-03-02", 3)]
    assert days[1]["errors"] == 1 and days[0]["cost_usd"] == approx(0.0531)
    hours = report(rgw, group_by="team,hour")["rows"]
    assert [(r["team"], r["hour"]) for r in hours] == [
        ("alpha", "2026-03-01T10:00:00Z"), ("alpha", "2026-03-01T11:00:00Z"),
        ("alpha", "2026-03-02T09:00:00Z"), ("alpha", "2026-03-02T12:00:00Z"),
        ("beta", "2026-03-01T13:00:00Z"), ("beta", "2026-03-02T23:00:00Z"),
        ("(admin key)", "2026-03-01T15:00:00Z")]
    assert all(r["requests"] == 1 for r in hours)


def test_group_by_key_model_member(rgw: Gateway) -> None:
    keys = report(rgw, group_by="key")["rows"]
    assert [(r["key_id"], r["key_prefix"], r["requests"]) for r in keys] == [
        (1, "gg-key1", 2), (2, "gg-key2", 2), (3, "gg-key3", 2), (None, "admin", 1)]
    models = {r["model"]: r["requests"] for r in report(rgw, group_by="model")["rows"]}
    assert models == {"auto": 3, "large": 1, "small": 3}
    both = report(rgw, group_by="member,model")["rows"]
    assert [(r["member"], r["model"], r["requests"]) for r in both] == [
        ("large", "auto", 1), ("large", "large", 1), ("small", "auto", 2), ("small", "small", 3)]


def test_member_filter(rgw: Gateway) -> None:
    body = report(rgw, member="small", group_by="team")
    assert body["totals"]["requests"] == 5
    assert body["totals"]["cost_usd"] == approx(0.0036)
    by_team = {r["team"]: r["requests"] for r in body["rows"]}
    assert by_team == {"alpha": 3, "beta": 1, "(admin key)": 1}
    assert report(rgw, member="nobody")["totals"]["requests"] == 0


def test_percentiles_on_known_set(rgw: Gateway) -> None:
    # 1..100 ms: percentile_cont gives 50.5, 95.05 and 99.01.
    seed(rgw, [row("2026-04-01 12:00:00", team="pct", latency_ms=float(i)) for i in range(1, 101)])
    t = report(rgw, team="pct", start="2026-04-01", end="2026-04-02")["totals"]
    tol = pct_tol(rgw)
    assert t["requests"] == 100
    assert t["latency_p50_ms"] == pytest.approx(50.5, rel=tol)
    assert t["latency_p95_ms"] == pytest.approx(95.05, rel=tol)
    assert t["latency_p99_ms"] == pytest.approx(99.01, rel=tol)
    # No rows at all: counts are zero and ratios and percentiles unknown, not zero.
    empty = report(rgw, start="2030-01-01", end="2030-01-02")["totals"]
    assert empty["requests"] == 0 and empty["latency_p50_ms"] is None
    assert empty["j_per_output_token"] is None and empty["measured_energy_share"] is None


def test_team_key_sees_only_its_team(rgw: Gateway) -> None:
    key = rgw.create_key("alpha")
    body = report(rgw, key)
    assert body["totals"]["requests"] == 4
    assert body["filters"]["team"] == "alpha"
    assert [r["team"] for r in report(rgw, key, group_by="team")["rows"]] == ["alpha"]
    assert [r["key_id"] for r in report(rgw, key, group_by="key")["rows"]] == [1, 2]
    assert report(rgw, key, team="alpha")["totals"]["requests"] == 4
    r = get(rgw, key, start=START, end=END, team="beta")
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "team_forbidden"
    # A key id of another team yields nothing: the team filter still applies.
    assert report(rgw, key, key_id=3)["totals"]["requests"] == 0


def test_csv(rgw: Gateway) -> None:
    r = get(rgw, start=START, end=END, group_by="team", format="csv")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/csv")
    lines = list(csv.DictReader(io.StringIO(r.text)))
    assert list(lines[0].keys()) == report_columns(("team",))
    assert [(x["team"], int(x["requests"])) for x in lines] == [
        ("alpha", 4), ("beta", 2), ("(admin key)", 1)]
    assert float(lines[0]["cost_usd"]) == approx(0.023)
    totals = list(csv.DictReader(io.StringIO(get(rgw, start=START, end=END,
                                                  format="csv").text)))
    assert len(totals) == 1 and int(totals[0]["requests"]) == 7


@pytest.mark.parametrize("params, param", [
    ({"group_by": "team,planet"}, "group_by"),
    ({"start": "yesterday"}, "start"),
    ({"end": "2026-13-01"}, "end"),
    ({"start": END, "end": START}, "start"),
    ({"format": "xml"}, "format"),
    ({"key_id": "abc"}, "key_id"),
])
def test_bad_parameters_400(rgw: Gateway, params: dict[str, str], param: str) -> None:
    r = get(rgw, **params)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param


def test_no_key_401(rgw: Gateway) -> None:
    r = get(rgw, key=None)
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "authentication_error"
    assert get(rgw, key="gg-not-a-key").status_code == 401


def test_default_range_is_last_7_days(rgw: Gateway) -> None:
    now = datetime.now(UTC)
    seed(rgw, [row(str((now - timedelta(hours=1)).replace(tzinfo=None)), team="recent"),
               row(str((now - timedelta(days=8)).replace(tzinfo=None)), team="recent")])
    body = get(rgw, team="recent").json()
    assert body["totals"]["requests"] == 1
    span = datetime.fromisoformat(body["end"]) - datetime.fromisoformat(body["start"])
    assert span == timedelta(days=7)
    # An unescaped '+' in the offset arrives as a space; it is still understood.
    r = get(rgw, start="2026-03-01T01:00:00 01:00", end=END)
    assert r.status_code == 200 and r.json()["totals"]["requests"] == 7


def test_report_function_directly(rgw: Gateway) -> None:
    q = ReportQuery(at("2026-03-01 00:00:00"), at("2026-03-03 00:00:00"), ("team", "day"),
                    team="alpha")
    rep = usage_report(rgw.engine, q)
    assert [(r["team"], r["day"], r["requests"]) for r in rep.rows] == [
        ("alpha", "2026-03-01", 2), ("alpha", "2026-03-02", 2)]
    assert rep.totals["requests"] == 4
    with pytest.raises(ValueError):
        ReportQuery(q.end, q.start)
    with pytest.raises(ValueError):
        ReportQuery(q.start, q.end, ("team", "team"))


def test_histogram_percentiles_stay_within_resolution() -> None:
    """The SQLite estimator, fed the buckets SQLite would compute, on skewed data."""
    rnd = random.Random(3)
    k = HIST_BUCKETS_PER_DOUBLING
    for n in (2, 3, 10, 57, 1000, 20000):
        xs = sorted(rnd.lognormvariate(5, 1.2) for _ in range(n))
        hist: dict[int, int] = {}
        for x in xs:
            b = math.floor(math.log2(x) * k)
            hist[b] = hist.get(b, 0) + 1
        got = hist_percentiles(hist, xs[0], xs[-1], (0.0, 0.5, 0.9, 0.95, 0.99, 1.0))
        for p, g in zip((0.0, 0.5, 0.9, 0.95, 0.99, 1.0), got, strict=True):
            h = p * (n - 1)
            lo = math.floor(h)
            exact = xs[lo] + (h - lo) * (xs[min(lo + 1, n - 1)] - xs[lo])
            assert g == pytest.approx(exact, rel=SQLITE_PERCENTILE_RESOLUTION), (n, p)
    assert hist_percentiles({}, None, None) == [None, None, None]


def test_sums_are_tidy_and_an_unknown_reference_energy_is_unknown(
    make_gateway: Any,
) -> None:
    # Three 0.1 $ requests sum to 0.30000000000000004 in floating point; the report says 0.3.
    # Their reference member has no energy figure: energy saved is unknown (null + why), not 0.
    gw = make_gateway()
    seed(gw, [row("2026-03-01 10:00:00", **alpha(1), requested_model="auto",
                  served_member="small", route_reason="auto:cheapest", latency_ms=10.0,
                  cost_usd=c, energy_j=1.0, energy_source="estimated:declared-j-per-token",
                  counterfactual_member="large", counterfactual_cost_usd=0.5)
              for c in (0.1, 0.1, 0.1)])
    body = report(gw)
    t = body["totals"]
    assert t["cost_usd"] == 0.3 and t["cost_saved_usd"] == 1.2
    assert t["counterfactual_energy_j"] is None and t["energy_saved_j"] is None
    assert body["energy_saved_note"] == "unknown: no energy figure for the reference member"
    by_member = report(gw, group_by="member")
    assert by_member["rows"][0]["energy_saved_j"] is None
    assert by_member["totals"]["energy_saved_j"] is None  # SQLite's totals add groups up


def test_energy_saved_note_is_absent_when_the_saving_is_known(rgw: Gateway) -> None:
    body = report(rgw)
    assert body["totals"]["energy_saved_j"] is not None and body["energy_saved_note"] is None
