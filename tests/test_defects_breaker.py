"""Issue 12, defect 2: one request must not black out the pool. The breaker counts distinct
failed requests over a window; 429 is back-pressure, not a failure."""

from __future__ import annotations

import httpx

from backends.health import CircuitBreaker
from tests.conftest import GatewayFactory

MSG = [{"role": "user", "content": "hello"}]


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_one_requests_retries_count_once() -> None:
    b = CircuitBreaker(3, 30, clock=Clock())
    for _ in range(10):
        b.record_failure("poison")
    assert b.available() and b.failed_requests == 1


def test_distinct_failures_in_the_window_open_it() -> None:
    clock = Clock()
    b = CircuitBreaker(3, 30, window_s=60, clock=clock)
    b.record_failure("a")
    b.record_failure("b")
    assert b.available() and b.state() == "degraded"
    b.record_failure("c")
    assert not b.available() and b.state() == "cooldown"
    clock.t += 31
    assert b.available()  # half-open: the next call probes
    b.record_failure("d")
    assert not b.available()  # the probe failed: cooled down again at once
    clock.t += 31
    b.record_success("e")
    assert b.available()
    b.record_failure("f")
    assert b.available()  # recovered: one failure is not enough any more


def test_old_failures_leave_the_window() -> None:
    clock = Clock()
    b = CircuitBreaker(3, 30, window_s=60, clock=clock)
    b.record_failure("a")
    b.record_failure("b")
    clock.t += 61
    b.record_failure("c")
    assert b.available() and b.failed_requests == 1


def test_failures_among_many_successes_do_not_open_it() -> None:
    b = CircuitBreaker(3, 30, failure_ratio=0.5, clock=Clock())
    for i in range(10):
        b.record_success(f"ok{i}")
        if i % 3 == 0:
            b.record_failure(f"bad{i}")
    assert b.failed_requests == 4 and b.available()


def test_one_teams_poison_prompt_does_not_503_another_team(
    make_gateway: GatewayFactory, fake
) -> None:
    gw = make_gateway()
    key_a, key_b = gw.create_key("team-a"), gw.create_key("team-b")
    # Team A's prompt makes the upstream fail on every attempt, on both members.
    fake.fail_statuses = [500] * 6
    r = gw.post("/v1/chat/completions", {"model": "fake-small", "messages": MSG}, key=key_a)
    assert r.status_code == 502
    assert len(gw.decision(r.headers["x-request-id"])["attempts"]) == 6
    r = gw.post("/v1/chat/completions", {"model": "fake-small", "messages": MSG}, key=key_b)
    assert r.status_code == 200, r.text
    assert r.headers["x-greengate-member"] == "fake-small"


def test_429_is_not_a_failure(make_gateway: GatewayFactory, fake) -> None:
    gw = make_gateway(cooldown_failures=1)
    fake.fail_statuses = [429] * 3
    r = gw.post("/v1/chat/completions", {"model": "fake-large", "messages": MSG})
    assert r.status_code == 429
    r = gw.post("/v1/chat/completions", {"model": "fake-large", "messages": MSG})
    assert r.status_code == 200, r.text
    pool = httpx.get(gw.url + "/admin/pool", headers=gw.headers(), timeout=10).json()
    assert {m["name"]: m["state"] for m in pool}["fake-large"] == "healthy"
