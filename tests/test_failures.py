"""Upstream failures: retries, fallback, timeouts, cooldown, and errors after the first byte."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import openai
import pytest

from tests.conftest import Gateway, GatewayFactory, default_pool

MSG = [{"role": "user", "content": "are you there"}]


def post_chat(gw: Gateway, model: str, stream: bool = False, **extra) -> httpx.Response:
    return gw.post("/v1/chat/completions", {"model": model, "messages": MSG, "stream": stream,
                                           **extra})


def test_retries_5xx_then_succeeds(gw: Gateway, fake) -> None:
    fake.fail_statuses = [500, 503]
    r = post_chat(gw, "fake-small")
    assert r.status_code == 200
    row = gw.decision(r.headers["x-request-id"])
    assert [a["status"] for a in row["attempts"]] == [500, 503, 200]
    assert row["served_member"] == "fake-small" and row["status"] == 200


def test_falls_back_to_next_member_after_retries(gw: Gateway, fake) -> None:
    fake.fail_statuses = [500, 500, 500]  # fake-small's three tries; fake-large then succeeds
    r = post_chat(gw, "fake-small")
    assert r.status_code == 200
    assert r.headers["x-greengate-member"] == "fake-large"
    row = gw.decision(r.headers["x-request-id"])
    assert row["served_member"] == "fake-large"
    assert [(a["member"], a["status"]) for a in row["attempts"]] == [
        ("fake-small", 500), ("fake-small", 500), ("fake-small", 500), ("fake-large", 200)]
    assert [m["body"]["model"] for m in fake.requests] == ["up-small"] * 3 + ["up-large"]


def test_connect_error_falls_back(gw: Gateway, fake) -> None:
    r = post_chat(gw, "dead")
    assert r.status_code == 200
    row = gw.decision(r.headers["x-request-id"])
    assert row["served_member"] == "fake-small"
    assert [a["kind"] for a in row["attempts"][:-1]] == ["connect"] * 3


def test_exhausted_gives_502_and_no_sdk_retry(make_gateway: GatewayFactory, fake) -> None:
    gw = make_gateway(cooldown_failures=100)
    fake.fail_statuses = [500] * 6
    r = post_chat(gw, "fake-small")
    assert r.status_code == 502
    assert r.headers["x-should-retry"] == "false"
    assert r.json()["error"]["code"] == "upstream_error"
    row = gw.decision(r.headers["x-request-id"])
    assert row["status"] == 502 and len(row["attempts"]) == 6
    # The official SDK honours the header: one HTTP call although it may retry twice.
    sdk = openai.OpenAI(base_url=gw.v1, api_key=gw.admin_key, max_retries=2)
    fake.fail_statuses = [500] * 6
    before = gw.count_decisions()
    with pytest.raises(openai.InternalServerError):
        sdk.chat.completions.create(model="fake-small", messages=MSG)
    time.sleep(0.2)
    assert gw.count_decisions() == before + 1


def test_upstream_client_error_passed_through_without_retry(gw: Gateway, fake) -> None:
    fake.fail_statuses = [400]
    r = post_chat(gw, "fake-small")
    assert r.status_code == 400
    assert r.json()["error"]["message"] == "mock failure 400"
    assert len(fake.requests) == 1
    row = gw.decision(r.headers["x-request-id"])
    assert row["status"] == 400 and row["attempts"][0]["status"] == 400


def test_429_retry_after_is_honoured(make_gateway: GatewayFactory, fake) -> None:
    # The wait chosen before each retry is in the decision row: Retry-After when the upstream
    # sent one (capped by retry_backoff_max_s), else the jittered exponential backoff.
    gw = make_gateway(retry_backoff_max_s=2.0)
    fake.fail_statuses = [429]
    fake.retry_after = "1"
    r = post_chat(gw, "fake-large")
    assert r.status_code == 200
    attempts = gw.decision(r.headers["x-request-id"])["attempts"]
    assert [a["status"] for a in attempts] == [429, 200]
    assert attempts[0]["retry_in_s"] == 1.0 and "retry_in_s" not in attempts[1]
    fake.fail_statuses = [429]
    fake.retry_after = "30"  # more than the cap: the cap wins
    r = post_chat(gw, "fake-large")
    assert gw.decision(r.headers["x-request-id"])["attempts"][0]["retry_in_s"] == 2.0


def test_backoff_without_retry_after_grows_and_is_jittered(make_gateway: GatewayFactory,
                                                          fake) -> None:
    gw = make_gateway(retry_backoff_s=0.01, retry_backoff_max_s=1.0)
    fake.fail_statuses = [500, 500]
    r = post_chat(gw, "fake-large")
    assert r.status_code == 200
    waits = [a.get("retry_in_s") for a in gw.decision(r.headers["x-request-id"])["attempts"]]
    assert waits[2] is None  # the answer: nothing after it
    assert 0.005 <= waits[0] <= 0.01 and 0.01 <= waits[1] <= 0.02  # base x 2^n, half-jittered


def test_first_byte_timeout_gives_504(make_gateway: GatewayFactory, fake, fake_url) -> None:
    pool = default_pool(fake_url)
    pool[1]["timeouts"] = {"first_byte_s": 0.2}
    pool[1]["retries"] = 0
    gw = make_gateway(pool)
    fake.latency_s = 0.6
    r = post_chat(gw, "fake-large")
    assert r.status_code == 504
    assert r.json()["error"]["code"] == "upstream_timeout"
    assert gw.decision(r.headers["x-request-id"])["attempts"][0]["kind"] == "timeout"
    r = post_chat(gw, "fake-large", stream=True)
    assert r.status_code == 504
    assert gw.decision(r.headers["x-request-id"])["status"] == 504


def test_cooldown_skips_failing_member(make_gateway: GatewayFactory, fake, fake_url) -> None:
    pool = default_pool(fake_url)
    pool[1]["retries"] = 0
    gw = make_gateway(pool, cooldown_failures=2, cooldown_s=60)
    fake.fail_statuses = [500, 500]
    assert post_chat(gw, "fake-large").status_code == 502
    assert post_chat(gw, "fake-large").status_code == 502
    n = len(fake.requests)
    r = post_chat(gw, "fake-large")
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "members_cooling_down"
    assert r.headers["x-should-retry"] == "false"
    assert int(r.headers["retry-after"]) > 0
    assert len(fake.requests) == n  # skipped: no call went upstream
    row = gw.decision(r.headers["x-request-id"])
    assert row["status"] == 503 and row["attempts"] == [
        {"member": "fake-large", "skipped": "cooldown"}]
    pool_state = httpx.get(gw.url + "/admin/pool", headers=gw.headers(), timeout=10).json()
    assert {m["name"]: m["state"] for m in pool_state}["fake-large"] == "cooldown"
    # 'auto' routes around the member in cooldown.
    r = post_chat(gw, "auto")
    assert r.status_code == 200
    assert gw.decision(r.headers["x-request-id"])["served_member"] == "fake-small"


def test_mid_stream_disconnect_ends_with_error_event(gw: Gateway, fake) -> None:
    fake.disconnect_after_chunks = 3
    sdk = openai.OpenAI(base_url=gw.v1, api_key=gw.admin_key, max_retries=0)
    got = []
    with pytest.raises(openai.APIError) as info, \
            sdk.chat.completions.with_streaming_response.create(
                model="fake-small", stream=True, messages=MSG) as raw:
        rid = raw.headers["x-request-id"]
        for chunk in raw.parse():
            got.append(chunk)
    assert "upstream stream failed" in str(info.value)
    assert len(got) == 3
    row = gw.decision(rid)
    assert row["status"] == 502 and "after the first token" in row["error"]
    assert row["completion_tokens"] > 0  # what was generated before the break is billed
    assert len(fake.requests) == 1  # after the first byte there is no silent retry


def test_client_disconnect_mid_stream_is_logged(gw: Gateway, fake) -> None:
    fake.chunk_delay_s = 0.05
    fake.reply = " ".join(["word"] * 200)
    sock = socket.create_connection(("127.0.0.1", gw.server.port))
    body = (b'{"model":"fake-small","stream":true,"messages":'
            b'[{"role":"user","content":"long"}]}')
    req = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
           f"Authorization: Bearer {gw.admin_key}\r\nContent-Type: application/json\r\n"
           f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    sock.sendall(req)
    head = sock.recv(65536).decode(errors="replace")
    rid = next(line.split(":", 1)[1].strip() for line in head.split("\r\n")
               if line.lower().startswith("x-request-id"))
    time.sleep(0.2)
    sock.close()
    row = gw.decision(rid)
    assert row["status"] == 499
    assert 0 < row["completion_tokens"] < 200


def test_concurrent_requests_each_get_a_row(gw: Gateway, fake) -> None:
    ids: list[str] = []

    def worker() -> None:
        for _ in range(5):
            r = post_chat(gw, "auto", stream=len(ids) % 2 == 0)
            assert r.status_code == 200
            ids.append(r.headers["x-request-id"])

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 20
    for rid in ids:
        assert gw.decision(rid)["status"] == 200
