"""Issue 12, defect 3: one deadline per request across every attempt and member, reported in
the 504; set by the gateway, a pool member, or the request's `request_timeout_s` field."""

from __future__ import annotations

import time

from tests.conftest import GatewayFactory, default_pool

MSG = [{"role": "user", "content": "hello"}]


def _hanging_pool(fake_url: str, **small: object) -> list[dict]:
    pool = default_pool(fake_url)
    # Per-attempt timeouts far above the deadline: only the deadline can end the wait.
    for m in pool[:2]:
        m["timeouts"] = {"first_byte_s": 30, "total_s": 30}
    pool[0].update(small)
    return pool


def test_request_field_sets_the_deadline(make_gateway: GatewayFactory, fake, fake_url: str) -> None:
    gw = make_gateway(_hanging_pool(fake_url))
    fake.latency_s = 10  # the upstream hangs
    for stream in (False, True):
        t = time.monotonic()
        r = gw.post(
            "/v1/chat/completions",
            {"model": "fake-small", "messages": MSG, "stream": stream, "request_timeout_s": 0.5},
        )
        took = time.monotonic() - t
        assert r.status_code == 504, r.text
        assert took < 3, took
        err = r.json()["error"]
        assert err["code"] == "request_timeout"
        assert "deadline of 0.5 s" in err["message"]
        assert r.headers["x-greengate-deadline-s"] == "0.5"
        row = gw.decision(r.headers["x-request-id"])
        assert row["status"] == 504 and row["features"]["deadline_s"] == 0.5
    # The extension never reaches the upstream.
    assert all("request_timeout_s" not in q["body"] for q in fake.requests)


def test_member_and_gateway_deadlines(make_gateway: GatewayFactory, fake, fake_url: str) -> None:
    gw = make_gateway(_hanging_pool(fake_url, request_timeout_s=0.4), request_timeout_s=0.8)
    fake.latency_s = 10
    t = time.monotonic()
    r = gw.post("/v1/chat/completions", {"model": "fake-small", "messages": MSG})
    assert r.status_code == 504 and time.monotonic() - t < 3
    assert "deadline of 0.4 s" in r.json()["error"]["message"]
    t = time.monotonic()
    r = gw.post("/v1/chat/completions", {"model": "fake-large", "messages": MSG})
    assert r.status_code == 504 and time.monotonic() - t < 3
    assert "deadline of 0.8 s" in r.json()["error"]["message"]
    # A request may shorten the deadline, not lengthen it.
    r = gw.post(
        "/v1/chat/completions", {"model": "fake-large", "messages": MSG, "request_timeout_s": 100}
    )
    assert "deadline of 0.8 s" in r.json()["error"]["message"]
    # A deadline cut is not the member's fault: its breaker stays closed.
    fake.latency_s = 0
    assert (
        gw.post("/v1/chat/completions", {"model": "fake-large", "messages": MSG}).status_code == 200
    )


def test_bad_request_timeout_is_a_400(make_gateway: GatewayFactory, fake) -> None:
    gw = make_gateway()
    for bad in (0, -1, "5", True):
        r = gw.post(
            "/v1/chat/completions",
            {"model": "fake-small", "messages": MSG, "request_timeout_s": bad},
        )
        assert r.status_code == 400 and r.json()["error"]["param"] == "request_timeout_s"
