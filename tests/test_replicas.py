"""Three gateway replicas as real processes on one PostgreSQL and one Redis (each reached
through a TCP proxy the tests cut): budgets exact under load spread over all, changes on one
in force on the others within a second, Redis and PostgreSQL outages with nothing served left
uncharged or unlogged, and a member's health agreed on by all."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tests.conftest import PG_BASE
from tests.faults import TcpProxy
from tests.replica_support import (
    Replica,
    isolated_stores,
    new_replica,
    replica_env,
    start_all,
    wait_until,
    write_pool,
)

REDIS = os.environ.get("GREENGATE_TEST_REDIS", "redis://127.0.0.1:6379/0")
WITHIN_S = 1.0  # the bound for a change on one replica to hold on the others


class Cluster:
    def __init__(self, replicas: list[Replica], pg: TcpProxy, rd: TcpProxy, db: str,
                 prefix: str) -> None:
        self.replicas, self.pg, self.redis, self.db, self.prefix = (
            replicas, pg, rd, db, prefix)
        self.engine = sa.create_engine(db)  # direct, not through the proxy

    def rows(self, team: str) -> list[dict]:
        with self.engine.connect() as c:
            return [dict(r) for r in c.execute(sa.text(
                "SELECT id, status, cost_usd FROM decisions WHERE team = :t"),
                {"t": team}).mappings()]


@pytest.fixture(scope="module")
def cluster(fake_server, tmp_path_factory) -> Iterator[Cluster]:
    server, _ = fake_server
    folder = tmp_path_factory.mktemp("replicas")
    with isolated_stores("rep", PG_BASE, REDIS) as (schema, prefix):
        pg_url = make_url(PG_BASE)
        pg = TcpProxy(pg_url.host or "127.0.0.1", pg_url.port or 5432)
        rd = TcpProxy("127.0.0.1", 6379)
        via_pg = pg_url.set(host="127.0.0.1", port=pg.port).render_as_string(
            hide_password=False)
        db_proxy = f"{via_pg}?options=-csearch_path%3D{schema}"
        db_direct = f"{PG_BASE}?options=-csearch_path%3D{schema}"
        cfg = write_pool(folder / "pool.yaml", server.url + "/v1")
        env = replica_env(db_proxy, f"redis://127.0.0.1:{rd.port}/0", prefix, folder / "state",
                          cfg, log_flush_interval_s=0.05, cooldown_failures=2,
                          cooldown_failure_ratio=0.5, cooldown_s=30, retries=1)
        reps = [new_replica(f"r{i}", folder, {**env, "GREENGATE_STATE_DIR": str(
            folder / f"state-{i}")}) for i in range(3)]
        try:
            start_all(reps)
            yield Cluster(reps, pg, rd, db_direct, prefix)
        finally:
            for r in reps:
                r.stop()
            pg.close()
            rd.close()


def _key(r: Replica, team: str) -> str:
    resp = r.post("/admin/keys", {"team": team, "allowed_models": None})
    assert resp.status_code == 201, resp.text
    return resp.json()["key"]


def _chat(r: Replica, key: str, model: str = "m", text: str = "same words each time",
          **kw) -> httpx.Response:
    return r.post("/v1/chat/completions", {"model": model, "messages": [
        {"role": "user", "content": text}], **kw}, key=key)


def _spread(cluster: Cluster, key: str, n: int, concurrency: int) -> list[httpx.Response]:
    reps = cluster.replicas
    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(lambda i: _chat(reps[i % len(reps)], key), range(n)))


def _wait_rows(cluster: Cluster, team: str, n: int, timeout: float = 20.0) -> list[dict]:
    wait_until(lambda: len(cluster.rows(team)) >= n, timeout, 0.1)
    return cluster.rows(team)


def _budget_json(r: Replica, budget_id: int) -> dict | None:
    resp = r.get("/admin/budgets")
    assert resp.status_code == 200, resp.text
    return next((b for b in resp.json() if b["id"] == budget_id), None)


def test_a_budget_made_on_one_replica_admits_exactly_its_worth_across_all(
        cluster: Cluster, fake) -> None:
    a, b, c = cluster.replicas
    team = "budget-" + uuid.uuid4().hex[:6]
    key = _key(a, team)
    for r in (a, b, c):  # history: what one request of this team costs
        assert _chat(r, key).status_code == 200
    cost = _wait_rows(cluster, team, 3)[0]["cost_usd"]
    assert cost and cost > 0
    spent = sum(r["cost_usd"] for r in cluster.rows(team))
    made = a.post("/admin/budgets", {"scope": "team", "subject": team, "metric": "usd",
                                     "period": "day", "limit": spent + 20 * cost})
    assert made.status_code == 201, made.text
    bid = made.json()["id"]
    for r in (b, c):
        took = wait_until(lambda r=r: _budget_json(r, bid) is not None, 5, 0.01)
        assert took is not None and took < WITHIN_S, f"{r.name} learnt the budget in {took}"
    fake.latency_s = 0.05  # requests overlap: many in flight when the cap is reached
    out = _spread(cluster, key, 120, 24)
    served = [x for x in out if x.status_code == 200]
    refused = [x for x in out if x.status_code == 429]
    assert len(served) + len(refused) == 120
    # Equal-cost requests: the stated bound is 0 (reservations of the mean cost).
    assert len(served) == 20
    assert refused[0].json()["error"]["code"] == "budget_exceeded"
    for r in (a, b, c):
        view = _budget_json(r, bid)
        assert view is not None and view["spent"] == pytest.approx(spent + 20 * cost)

    # Deleted on c: the others admit again within a second.
    assert c.get("/admin/budgets").status_code == 200
    assert httpx.delete(c.url + f"/admin/budgets/{bid}", headers=c.headers(),
                        timeout=10).status_code == 200
    fake.latency_s = 0.0
    took = wait_until(lambda: _chat(a, key).status_code == 200, 5, 0.01)
    assert took is not None and took < WITHIN_S


def test_a_key_revoked_on_one_replica_is_refused_by_the_others_within_a_second(
        cluster: Cluster) -> None:
    a, b, c = cluster.replicas
    key = _key(a, "revoke-" + uuid.uuid4().hex[:6])
    for r in (b, c):
        assert _chat(r, key).status_code == 200  # cached on b and c (TTL 30 s)
    kid = next(k["id"] for k in a.get("/admin/keys").json() if key.startswith(k["prefix"]))
    assert httpx.delete(a.url + f"/admin/keys/{kid}", headers=a.headers(),
                        timeout=10).status_code == 200
    for r in (b, c):
        took = wait_until(lambda r=r: _chat(r, key).status_code == 401, 5, 0.01)
        assert took is not None and took < WITHIN_S, f"{r.name}: {took}"


def test_a_policy_written_on_one_replica_holds_on_the_others_within_a_second(
        cluster: Cluster) -> None:
    a, b, c = cluster.replicas
    team = "policy-" + uuid.uuid4().hex[:6]
    key = _key(a, team)

    def member(r: Replica) -> str:
        resp = _chat(r, key, model="auto")
        assert resp.status_code == 200, resp.text
        return resp.headers["x-greengate-member"]

    for allowed in ("m", "m2", "m"):  # each change made on a, in force on b and c
        put = httpx.put(a.url + f"/admin/policies/{team}", json={"allowed_members": [allowed]},
                        headers=a.headers(), timeout=10)
        assert put.status_code == 200, put.text
        for r in (b, c):  # without the event: the policy cache's 5 s TTL
            took = wait_until(lambda r=r, m=allowed: member(r) == m, 5, 0.01)
            assert took is not None and took < WITHIN_S, f"{r.name} -> {allowed}: {took}"


def test_redis_outage_serves_per_setting_and_charges_everything_after(
        cluster: Cluster) -> None:
    a, b, c = cluster.replicas
    team = "outage-" + uuid.uuid4().hex[:6]
    key = _key(a, team)
    bid = a.post("/admin/budgets", {"scope": "team", "subject": team, "metric": "usd",
                                    "period": "day", "limit": 1000.0}).json()["id"]
    wait_until(lambda: all(_budget_json(r, bid) for r in (b, c)), 5)
    assert all(x.status_code == 200 for x in _spread(cluster, key, 9, 3))
    cluster.redis.cut()
    try:
        during = _spread(cluster, key, 30, 6)
        assert all(x.status_code == 200 for x in during)  # fail_open (the default)
        for r in (a, b, c):
            assert r.get("/admin/budgets").status_code == 200  # never a 500
            ready = r.get("/admin/replicas")
            assert ready.status_code == 200 and ready.json()["redis"] == "unreachable"
    finally:
        cluster.redis.restore()
    rows = _wait_rows(cluster, team, 39)
    served_cost = sum(r["cost_usd"] for r in rows if r["status"] == 200)
    assert len([r for r in rows if r["status"] == 200]) == 39

    def charged() -> bool:
        views = [_budget_json(r, bid) for r in (a, b, c)]
        return all(v is not None and v["spent"] == pytest.approx(served_cost) for v in views)

    assert wait_until(charged, 10, 0.1) is not None, [_budget_json(r, bid) for r in (a, b, c)]


def test_postgres_outage_serves_and_every_answer_gets_its_row(cluster: Cluster) -> None:
    a, b, c = cluster.replicas
    team = "pgdown-" + uuid.uuid4().hex[:6]
    key = _key(a, team)
    for r in (a, b, c):
        assert _chat(r, key).status_code == 200  # the key is in every replica's memory
    cluster.pg.cut()
    try:
        during = _spread(cluster, key, 30, 6)
    finally:
        cluster.pg.restore()
    ok = [x.headers["x-request-id"] for x in during if x.status_code == 200]
    assert len(ok) == 30  # fail_open: served from memory, rows journaled
    rows = _wait_rows(cluster, team, 33, timeout=40)
    assert set(ok) <= {r["id"] for r in rows}


def test_replicas_agree_on_a_member_in_cooldown(cluster: Cluster, fake) -> None:
    a, b, c = cluster.replicas
    key = _key(a, "breaker-" + uuid.uuid4().hex[:6])

    def cooling(r: Replica) -> bool:
        return r.get("/health/ready").json()["members"]["m2"] == "cooldown"

    assert not any(cooling(r) for r in (a, b, c))
    # m2 saw few requests in the last minute: these failures are most of what it saw.
    fake.fail_statuses = [500] * 80  # two attempts per request (retries=1)
    for i in range(40):
        assert _chat(a, key, model="m2", text=f"fail {i}").status_code >= 500
        if cooling(a):
            break
    assert cooling(a)
    for r in (b, c):
        took = wait_until(lambda r=r: cooling(r), 5, 0.01)
        assert took is not None and took < WITHIN_S, f"{r.name}: {took}"
