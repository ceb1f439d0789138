"""Budget counters shared through real Redis (127.0.0.1:6379): exact admission by several
replicas at once, and charges kept through an outage made by cutting a TCP proxy."""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from gateway.errors import GatewayError
from gateway.shared_budgets import SharedBudgets
from gateway.shared_state import RedisLink
from telemetry.budgets import BudgetRule
from tests.faults import TcpProxy

REDIS = os.environ.get("GREENGATE_TEST_REDIS", "redis://127.0.0.1:6379/0")
COST = 0.001
RULE = BudgetRule(1, "team", "t", "usd", "day", 20 * COST)  # worth exactly 20 requests


@pytest.fixture
def prefix() -> str:
    p = f"ggtest:{uuid.uuid4().hex[:10]}:"
    yield p
    r = redis.Redis.from_url(REDIS)
    keys = list(r.scan_iter(p + "*"))
    if keys:
        r.delete(*keys)


def _budgets(prefix: str, url: str = REDIS, **kw) -> SharedBudgets:
    b = SharedBudgets(RedisLink(url, probe_s=0.05), prefix, **kw)
    b.rules = [RULE]
    b.seed(RULE, 0.0)
    return b


def _request(b: SharedBudgets, barrier: threading.Barrier | None = None) -> bool:
    rid = uuid.uuid4().hex
    if b.check("t", None, rid=rid) is not None:
        return False
    if barrier is not None:  # hold the request "in flight" until everyone has tried
        barrier.wait(timeout=5)
    b.charge("t", None, COST, None, rid=rid)
    return True


def test_three_replicas_admit_exactly_the_budget_under_concurrency(prefix: str) -> None:
    replicas = [_budgets(prefix) for _ in range(3)]
    replicas[0].seed_estimate(RULE, COST, 50)  # the history says what a request costs
    with ThreadPoolExecutor(48) as pool:
        admitted = sum(pool.map(lambda i: _request(replicas[i % 3]), range(300)))
    assert admitted == 20
    for b in replicas:
        b.flush()  # charges land on a background thread
    assert replicas[1].spent(RULE) == pytest.approx(20 * COST)


def test_reservations_stop_concurrent_overshoot(prefix: str) -> None:
    """64 requests in flight at once, none finished: check-then-charge would admit all 64."""
    b = _budgets(prefix)
    b.seed_estimate(RULE, COST, 10)
    rids = [uuid.uuid4().hex for _ in range(64)]
    admitted = [rid for rid in rids if b.check("t", None, rid=rid) is None]
    assert len(admitted) == 20
    for rid in admitted:
        b.charge("t", None, COST, None, rid=rid)
    assert b.check("t", None, rid="late") is not None


def test_refused_and_failed_requests_release_their_reservation(prefix: str) -> None:
    b = _budgets(prefix)
    b.seed_estimate(RULE, COST, 10)
    for _ in range(100):  # each admitted, then failed upstream: charged nothing
        rid = uuid.uuid4().hex
        assert b.check("t", None, rid=rid) is None
        b.charge("t", None, None, None, rid=rid)
        b.flush()  # the release lands on the charging thread; until then the share is held
    assert b.spent(RULE) == 0.0


def test_outage_fail_open_charges_are_reconciled(prefix: str) -> None:
    proxy = TcpProxy("127.0.0.1", 6379)
    url = f"redis://127.0.0.1:{proxy.port}/0"

    async def run() -> None:
        b = _budgets(prefix, url)
        b.seed_estimate(RULE, COST, 10)
        for _ in range(5):
            assert _request(b)
        proxy.cut()
        served = sum(_request(b) for _ in range(5))  # fail_open: served, charged locally
        assert served == 5 and not b.link.ok
        # The local view, not an error: a charge whose reply the cut lost counts twice here
        # until Redis answers (the replay is once per request there).
        assert 10 * COST - 1e-9 <= b.spent(RULE) <= 11 * COST + 1e-9
        proxy.restore()
        for _ in range(100):
            await asyncio.sleep(0.05)
            b.flush()
            if b.link.ok and b.owed == 0:
                break
        assert b.link.ok and b.owed == 0, (b.link.ok, b.owed)
        direct = _budgets(prefix)
        assert direct.spent(RULE) == pytest.approx(10 * COST)  # nothing served uncharged
        assert sum(_request(direct) for _ in range(30)) == 10

    try:
        asyncio.run(run())
    finally:
        proxy.close()


def test_outage_fail_closed_refuses_budgeted_requests(prefix: str) -> None:
    proxy = TcpProxy("127.0.0.1", 6379)
    url = f"redis://127.0.0.1:{proxy.port}/0"
    try:
        b = _budgets(prefix, url, outage="fail_closed")
        assert _request(b)
        proxy.cut()
        with pytest.raises(GatewayError) as e:
            _request(b)
        assert e.value.status == 503
        assert b.check("other-team", None, rid="x") is None  # no rule: not affected
    finally:
        proxy.close()
