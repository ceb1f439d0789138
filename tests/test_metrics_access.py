"""GREENGATE_METRICS_ACCESS: /metrics open, behind the admin key, or on a port of its own."""

from __future__ import annotations

import socket

import httpx

from tests.conftest import GatewayFactory


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_open_metrics_answer_anyone(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(metrics_access="open")
    r = httpx.get(gw.url + "/metrics", timeout=10)
    assert r.status_code == 200 and "greengate_requests_total" in r.text


def test_admin_metrics_need_the_admin_key(make_gateway: GatewayFactory) -> None:
    gw = make_gateway(metrics_access="admin")
    team_key = gw.create_key("alpha")
    assert httpx.get(gw.url + "/metrics", timeout=10).status_code == 401
    r = httpx.get(gw.url + "/metrics", headers=gw.headers(team_key), timeout=10)
    assert r.status_code == 403 and r.json()["error"]["code"] == "admin_only"
    r = httpx.get(gw.url + "/metrics", headers=gw.headers(), timeout=10)
    assert r.status_code == 200 and "greengate_requests_total" in r.text


def test_port_metrics_leave_the_api_port(make_gateway: GatewayFactory, fake) -> None:
    port = _free_port()
    gw = make_gateway(metrics_access="port", metrics_port=port)
    r = httpx.get(gw.url + "/metrics", headers=gw.headers(), timeout=10)
    assert r.status_code == 404 and str(port) in r.json()["error"]["message"]
    gw.post("/v1/chat/completions",
            {"model": "fake-small", "messages": [{"role": "user", "content": "hi"}]})
    r = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert r.status_code == 200 and "greengate_requests_total" in r.text
    assert 'member="fake-small"' in r.text  # the same registry the gateway counts into
