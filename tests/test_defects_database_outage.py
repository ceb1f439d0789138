"""Issue 12, defect 4: PostgreSQL away must not mean 500 for every request. Keys and policies
are served from memory, decision rows journaled and written on recovery (fail_open), or every
request is refused with 503 and Retry-After (fail_closed). The database is cut by a TCP proxy
in front of it; the shared server is never stopped."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.conftest import Gateway, GatewayFactory
from tests.faults import TcpProxy

MSG = [{"role": "user", "content": "hello while the database is away"}]


@pytest.fixture
def pg_proxy(pg_url: str) -> Iterator[tuple[TcpProxy, str]]:
    url = make_url(pg_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    yield proxy, url.set(port=proxy.port).render_as_string(hide_password=False)
    proxy.close()


def _chat(gw: Gateway, key: str, model: str, stream: bool = False) -> httpx.Response:
    return gw.post(
        "/v1/chat/completions", {"model": model, "messages": MSG, "stream": stream}, key=key
    )


def test_fail_open_serves_from_memory_and_writes_rows_on_recovery(
    make_gateway: GatewayFactory, pg_proxy: tuple[TcpProxy, str], fake
) -> None:
    proxy, url = pg_proxy
    gw = make_gateway(database_url=url, key_cache_ttl_s=0.2)
    key = gw.create_key("team-out")
    r = httpx.put(
        gw.url + "/admin/policies/team-out",
        headers=gw.headers(),
        timeout=10,
        json={"allowed_members": ["fake-large"]},
    )
    assert r.status_code == 200, r.text
    assert _chat(gw, key, "auto").headers["x-greengate-member"] == "fake-large"

    proxy.cut()
    time.sleep(0.4)  # past the key TTL: refreshes now fail
    served = []
    for i in range(12):
        r = _chat(gw, key, "auto" if i % 3 else "fake-small", stream=i % 2 == 0)
        assert r.status_code == 200, r.text
        served.append(r.headers["x-request-id"])
        if i % 3:  # the team's policy (last known good) is still in force
            assert r.headers["x-greengate-member"] == "fake-large"
    # What cannot be served from memory is a clean 503, never a 500.
    for r in (
        gw.post("/v1/feedback", {"request_id": served[0], "score": 1}, key=key),
        httpx.get(gw.url + "/admin/keys", headers=gw.headers(), timeout=10),
        _chat(gw, "gg-a-key-never-seen", "fake-small"),
    ):
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"]
        assert r.json()["error"]["code"] == "database_unavailable"
    ready = httpx.get(gw.url + "/health/ready", timeout=10)
    assert ready.status_code == 200 and ready.json()["status"] == "degraded"

    proxy.restore()  # recovery without a restart
    for rid in served:
        assert gw.decision(rid, timeout=60)["status"] == 200
    r = _chat(gw, key, "fake-small")
    assert r.status_code == 200
    assert gw.decision(r.headers["x-request-id"])["team"] == "team-out"
    deadline = time.monotonic() + 10
    while httpx.get(gw.url + "/health/ready", timeout=10).json()["status"] != "ok":
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_fail_closed_answers_503_with_retry_after(
    make_gateway: GatewayFactory, pg_proxy: tuple[TcpProxy, str], fake
) -> None:
    proxy, url = pg_proxy
    gw = make_gateway(database_url=url, key_cache_ttl_s=0.2, database_outage="fail_closed")
    key = gw.create_key("team-closed")
    assert _chat(gw, key, "fake-small").status_code == 200
    proxy.cut()
    deadline = time.monotonic() + 15
    statuses = []
    while True:
        r = _chat(gw, key, "fake-small")
        statuses.append(r.status_code)
        if r.status_code == 503:
            break
        assert time.monotonic() < deadline, statuses
        time.sleep(0.2)
    assert set(statuses) <= {200, 503}
    assert r.json()["error"]["code"] == "database_unavailable" and r.headers["retry-after"]
    assert httpx.get(gw.url + "/health/ready", timeout=10).status_code == 503
    proxy.restore()
    deadline = time.monotonic() + 15
    while _chat(gw, key, "fake-small").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.2)
