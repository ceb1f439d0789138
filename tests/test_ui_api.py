"""The admin UI's server side without a browser: sessions, CSRF, team read-only access, the
endpoints the pages read, and plotly.js served from the installed package."""

from __future__ import annotations

import http.client
import re
from typing import Any

import httpx
import pytest

from gateway.errors import GatewayError
from gateway.explain import explain
from gateway.sessions import LoginThrottle, SessionStore
from routing.reward import RewardBounds
from tests.conftest import Gateway
from tests.ui_support import csrf_of, sign_in

PAGES = ["/ui", "/ui/policies", "/ui/policies/default", "/ui/keys", "/ui/decisions",
         "/ui/dashboards", "/ui/dashboards?range=24h"]


def chat(gw: Gateway, key: str | None = None, model: str = "fake-small") -> httpx.Response:
    r = gw.post("/v1/chat/completions", {"model": model,
                                         "messages": [{"role": "user", "content": "hi"}]},
                key=key)
    assert r.status_code == 200, r.text
    return r


def test_strangers_are_sent_to_sign_in(gw: Gateway) -> None:
    r = httpx.get(gw.url + "/ui/decisions?team=a", timeout=10)
    assert r.status_code == 303
    assert r.headers["location"] == "/ui/login?next=%2Fui%2Fdecisions%3Fteam%3Da"
    login = httpx.get(gw.url + "/ui/login", timeout=10)
    assert login.status_code == 200 and 'type="password"' in login.text
    assert "frame-ancestors 'none'" in login.headers["content-security-policy"]
    cookie = login.headers["set-cookie"].lower()
    assert "gg_login=" in cookie and "httponly" in cookie and "samesite=strict" in cookie


def test_sign_in_cookie_pages_and_sign_out(gw: Gateway) -> None:
    c = httpx.Client(base_url=gw.url, timeout=30)
    token = re.search(r'name="csrf" value="([^"]+)"', c.get("/ui/login").text).group(1)
    r = c.post("/ui/login", data={"key": gw.admin_key, "csrf": token,
                                  "next": "/ui/keys"})
    assert r.status_code == 303 and r.headers["location"] == "/ui/keys"
    cookie = next(v for k, v in r.headers.multi_items()
                  if k == "set-cookie" and v.startswith("gg_session="))
    flags = {p.strip().lower() for p in cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/"} <= flags
    assert "secure" not in flags  # plain http: a Secure cookie would never come back
    assert gw.admin_key not in cookie  # an opaque id, not the key

    chat(gw)
    for page in PAGES:
        p = c.get(page)
        assert p.status_code == 200, (page, p.text[:500])
        assert "Sign out" in p.text and gw.admin_key not in p.text
        assert p.headers["cache-control"] == "no-store"

    csrf = csrf_of(c)
    assert c.post("/ui/logout", data={"csrf": "wrong"}).status_code == 403
    out = c.post("/ui/logout", data={"csrf": csrf})
    assert out.status_code == 303 and out.headers["location"] == "/ui/login"
    c.cookies.clear()
    stale = httpx.get(gw.url + "/admin/keys", timeout=10,
                      cookies={"gg_session": cookie.split(";")[0].split("=", 1)[1]})
    assert stale.status_code == 401 and stale.json()["error"]["code"] == "session_expired"


def test_empty_gateway_pages_say_so(gw: Gateway) -> None:
    c = sign_in(gw)
    assert "No requests in this range yet" in c.get("/ui/dashboards").text
    assert "No decisions match" in c.get("/ui/decisions").text
    assert "No keys yet" in c.get("/ui/keys").text
    assert "uses built-in defaults" in c.get("/ui/policies/newteam").text
    missing = c.get("/ui/decisions/nope")
    assert missing.status_code == 404 and "No decision" in missing.text


def test_sign_in_form_is_protected_and_throttled(gw: Gateway) -> None:
    c = httpx.Client(base_url=gw.url, timeout=30)
    c.get("/ui/login")
    assert c.post("/ui/login", data={"key": gw.admin_key, "csrf": "forged"}).status_code == 400
    # A cross-site form post carries no cookie at all (SameSite=Strict).
    bare = httpx.post(gw.url + "/ui/login", data={"key": gw.admin_key, "csrf": "x"}, timeout=10)
    assert bare.status_code == 400 and "gg_session" not in bare.headers.get("set-cookie", "")

    def attempt(key: str) -> httpx.Response:
        token = re.search(r'name="csrf" value="([^"]+)"', c.get("/ui/login").text).group(1)
        return c.post("/ui/login", data={"key": key, "csrf": token})

    for _ in range(10):
        assert attempt("gg-wrong").status_code == 401
    r = attempt(gw.admin_key)  # even the right key waits once the limit is reached
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
    assert "Too many failed sign-ins" in r.text


def test_session_writes_need_the_csrf_header_bearer_does_not(gw: Gateway) -> None:
    c = sign_in(gw)
    r = c.post("/admin/teams", json={"name": "ops"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "csrf_failed"
    r = c.post("/admin/teams", json={"name": "ops"}, headers={"x-csrf-token": "nope"})
    assert r.status_code == 403
    r = c.post("/admin/teams", json={"name": "ops"}, headers={"x-csrf-token": csrf_of(c)})
    assert r.status_code == 201, r.text
    assert c.get("/admin/teams").json()[0]["name"] == "ops"  # reads need no token
    # Scripts are unchanged: the bearer key, no cookie, no CSRF token.
    assert gw.post("/admin/teams", {"name": "ops2"}).status_code == 201
    # A session never opens /v1: the data plane takes keys only.
    v1 = c.post("/v1/chat/completions", json={"model": "fake-small", "messages": []})
    assert v1.status_code == 401


def test_team_session_reads_its_own_team_and_writes_nothing(gw: Gateway, fake: Any) -> None:
    key = gw.create_key("alpha")
    gw.create_key("beta")
    chat(gw, key)
    chat(gw)  # admin traffic: not alpha's
    c = sign_in(gw, key)
    token = csrf_of(c)
    keys = c.get("/admin/keys").json()
    assert {k["team"] for k in keys} == {"alpha"} and all("key" not in k for k in keys)
    assert c.get("/admin/keys?team=beta").status_code == 403
    assert [t["name"] for t in c.get("/admin/teams").json()] == ["alpha"]
    rows = c.get("/admin/decisions").json()
    assert rows and {d["team"] for d in rows} == {"alpha"}
    stats = c.get("/admin/pool/stats").json()
    assert stats["team"] == "alpha"
    assert sum(m["windows"].get("24h", {}).get("requests", 0) for m in stats["members"]) == 1
    assert c.get("/v1/reports/usage?team=beta").status_code == 403
    assert c.get("/admin/policies/beta").status_code == 403
    for method, path, body in (("POST", "/admin/teams", {"name": "x"}),
                               ("POST", "/admin/keys", {"team": "alpha"}),
                               ("DELETE", f"/admin/keys/{keys[0]['id']}", None),
                               ("PUT", "/admin/policies/alpha", {"lambda": 0.9}),
                               ("GET", "/admin/feedback", None),
                               ("GET", "/admin/cache", None)):
        r = c.request(method, path, json=body, headers={"x-csrf-token": token})
        assert r.status_code == 403, (method, path, r.text)
        assert r.json()["error"]["code"] == "admin_only"
    # The same key as a bearer stays out of /admin (unchanged API contract).
    assert httpx.get(gw.url + "/admin/keys", headers=gw.headers(key),
                     timeout=10).status_code == 403
    for page in ("/ui", "/ui/keys", "/ui/decisions", "/ui/dashboards", "/ui/policies/alpha"):
        p = c.get(page)
        assert p.status_code == 200 and "read-only" in p.text, page
        assert 'id="create-key"' not in p.text and 'id="save-policy"' not in p.text
    assert c.get("/ui/policies").headers["location"] == "/ui/policies/alpha"
    assert c.get("/ui/policies/beta").status_code == 403

    assert httpx.delete(f"{gw.url}/admin/keys/{keys[0]['id']}", headers=gw.headers(),
                        timeout=10).status_code == 200
    assert c.get("/admin/keys").status_code == 401  # the key's sessions end with it
    assert c.get("/ui").status_code == 303


def test_pool_stats_decision_filters_and_explanation(gw: Gateway, fake: Any) -> None:
    for _ in range(3):
        chat(gw)
    rid = chat(gw, model="auto").headers["x-request-id"]
    gw.decision(rid)
    h = gw.headers()
    stats = httpx.get(gw.url + "/admin/pool/stats", headers=h, timeout=10).json()
    assert stats["windows"] == ["1h", "24h"]
    small = next(m for m in stats["members"] if m["name"] == "fake-small")
    assert small["state"] == "healthy" and small["windows"]["1h"]["requests"] == 4
    assert small["windows"]["1h"]["traffic_share"] == 1.0
    assert small["windows"]["1h"]["error_rate"] == 0.0
    assert small["windows"]["24h"]["estimated_energy_share"] == 1.0

    d = httpx.get(f"{gw.url}/admin/decisions/{rid}", headers=h, timeout=10).json()
    assert "cheapest healthy member" in d["explanation"]["sentence"]
    t = d["created_at"]
    def count(**q: str) -> int:
        return len(httpx.get(gw.url + "/admin/decisions", params=q, headers=h,
                             timeout=10).json())
    assert count(since=t) >= 1 and count(until="2000-01-01") == 0
    assert count(since="2000-01-01T00:00:00", until="2999-01-01") == 4
    assert httpx.get(gw.url + "/admin/decisions?since=yesterday", headers=h,
                     timeout=10).status_code == 400

    schema = httpx.get(gw.url + "/openapi.json", timeout=10).json()
    stats_op = schema["paths"]["/admin/pool/stats"]["get"]
    assert stats_op["x-team-readable"] and "traffic_share" in (
        stats_op["responses"]["200"]["description"])
    assert not any(p.startswith("/ui") for p in schema["paths"])


def test_plotly_comes_from_the_installed_package(gw: Gateway) -> None:
    import importlib.resources

    r = httpx.get(gw.url + "/ui/static/plotly.min.js?v=1", timeout=30)
    assert r.status_code == 200 and r.headers["content-encoding"] == "gzip"
    assert "immutable" in r.headers["cache-control"]
    shipped = (importlib.resources.files("plotly") / "package_data" / "plotly.min.js")
    assert r.content == shipped.read_bytes()  # httpx inflates it
    assert httpx.get(gw.url + "/ui/static/ui.css", timeout=10).status_code == 200
    for bad in ("..%2Fpage.py", "nope.css", "page.py"):
        assert httpx.get(f"{gw.url}/ui/static/{bad}", timeout=10).status_code == 404


def test_session_store_expiry_and_throttle() -> None:
    now = [0.0]
    store = SessionStore(idle_s=10, absolute_s=25, clock=lambda: now[0])
    s = store.create("h")
    now[0] = 9
    assert store.get(s.id) is s
    now[0] = 18
    assert store.get(s.id) is s  # idle timer restarted at 9
    now[0] = 26
    assert store.get(s.id) is None  # absolute limit
    t = LoginThrottle(max_failures=2, window_s=60, clock=lambda: now[0])
    t.failed("a")
    assert t.retry_after("a") == 0
    t.failed("a")
    assert t.retry_after("a") == 60 and t.retry_after("b") == 0
    now[0] += 61
    assert t.retry_after("a") == 0


@pytest.mark.parametrize(("lam", "winner_terms", "expect"), [
    (0.9, {"quality": 0.5}, "lower expected energy"),
    (0.0, {"quality": 0.9}, "higher estimated quality"),
])
def test_explanation_names_the_deciding_term(lam: float, winner_terms: dict,
                                              expect: str) -> None:
    bounds = RewardBounds(500.0, 0.01)
    green = {"member": "green", "quality_estimate": 0.5, "bonus": 0.0,
             "expected_energy_j": 3.2, "expected_cost_usd": 1e-5}
    big = {"member": "big", "quality_estimate": 0.9, "bonus": 0.0,
           "expected_energy_j": 128.0, "expected_cost_usd": 1e-4}

    def score(c: dict) -> float:
        return ((1 - lam) * c["quality_estimate"] - lam * c["expected_energy_j"] / 500
                - 0.0 * c["expected_cost_usd"])

    cands = sorted([green, big], key=score, reverse=True)
    for c in cands:
        c["score"] = score(c)
    d = {"route_reason": "auto:bandit", "served_member": cands[0]["member"],
         "candidates": cands, "features": {"policy": {"lambda": lam, "mu": 0.0}}}
    out = explain(d, bounds)
    assert expect in out["sentence"] and out["sentence"].startswith(cands[0]["member"])
    win = out["candidates"][0]
    assert sum(win["terms"].values()) == pytest.approx(win["score"])
    assert winner_terms["quality"] == cands[0]["quality_estimate"]


def test_sign_ins_cannot_evict_other_peoples_sessions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gateway.sessions.MAX_SESSIONS", 5)
    store = SessionStore()
    admin = store.create("admin-hash")
    team = [store.create("team-hash") for _ in range(4)]
    # The store is full of live sessions: a new one is refused, nobody is signed out.
    with pytest.raises(GatewayError) as e:
        store.create("team-hash-2")
    assert e.value.status == 503
    assert store.get(admin.id) is admin and all(store.get(s.id) for s in team)
    # One key's flood only pushes out that key's own oldest sessions.
    monkeypatch.setattr("gateway.sessions.MAX_PER_KEY", 4)
    newest = store.create("team-hash")
    assert store.get(team[0].id) is None and store.get(newest.id) is newest
    assert store.get(admin.id) is admin


def test_signing_in_with_a_team_key_buys_no_more_admin_guesses(gw: Gateway) -> None:
    team_key = gw.create_key("guessers")
    c = httpx.Client(base_url=gw.url, timeout=30)

    def attempt(key: str) -> httpx.Response:
        token = re.search(r'name="csrf" value="([^"]+)"', c.get("/ui/login").text).group(1)
        return c.post("/ui/login", data={"key": key, "csrf": token})

    for _ in range(9):
        assert attempt("gg-admin-guess").status_code == 401
    other = httpx.Client(base_url=gw.url, timeout=30)  # same address, its own cookies
    token = re.search(r'name="csrf" value="([^"]+)"', other.get("/ui/login").text).group(1)
    assert other.post("/ui/login", data={"key": team_key, "csrf": token}).status_code == 303
    assert attempt("gg-admin-guess").status_code == 401  # the 10th failure
    assert attempt("gg-admin-guess").status_code == 429


def test_throttle_fails_closed_when_flooded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gateway.sessions.MAX_THROTTLED_CLIENTS", 3)
    now = [0.0]
    t = LoginThrottle(max_failures=2, window_s=60, clock=lambda: now[0])
    for client in ("a", "b", "c"):
        t.failed(client)
    assert t.retry_after("d") == 60  # no room to count a new address: it waits
    now[0] = 61
    assert t.retry_after("d") == 0  # the old counts expired and made room


@pytest.mark.parametrize("path", ["/ui/policies/.", "/ui/decisions/.", "/ui/policies/.."])
def test_dot_segments_are_not_found(gw: Gateway, path: str) -> None:
    c = sign_in(gw)
    # httpx would normalise the dots away; send them raw, as a crafted request would.
    conn = http.client.HTTPConnection("127.0.0.1", int(gw.url.rsplit(":", 1)[1]), timeout=30)
    cookie = "; ".join(f"{k}={v}" for k, v in c.cookies.items())
    conn.request("GET", path, headers={"cookie": cookie})
    r = conn.getresponse()
    body = r.read().decode()
    conn.close()
    assert r.status == 404, body[:300]


def test_cross_origin_writes_are_refused_even_with_the_token(gw: Gateway) -> None:
    c = sign_in(gw)
    token = csrf_of(c)
    h = {"x-csrf-token": token}
    evil = c.post("/admin/teams", json={"name": "t-evil"},
                  headers={**h, "origin": "https://evil.example"})
    assert evil.status_code == 403
    same = c.post("/admin/teams", json={"name": "t-ok"}, headers={**h, "origin": gw.url})
    assert same.status_code == 201, same.text
    form = httpx.Client(base_url=gw.url, timeout=30)
    login_token = re.search(r'name="csrf" value="([^"]+)"', form.get("/ui/login").text).group(1)
    r = form.post("/ui/login", data={"key": gw.admin_key, "csrf": login_token},
                  headers={"origin": "https://evil.example"})
    assert r.status_code == 400 and "gg_session" not in r.headers.get("set-cookie", "")


def test_energy_saved_reads_unknown_when_the_reference_member_has_no_figure(gw: Gateway) -> None:
    import uuid
    from datetime import UTC, datetime, timedelta

    import sqlalchemy as sa

    from store.schema import Decision

    row: dict[str, Any] = {c.name: None for c in Decision.__table__.columns}
    row.update(id=uuid.uuid4().hex, created_at=datetime.now(UTC) - timedelta(hours=1),
               endpoint="chat/completions", stream=False, status=200, cache_hit=False,
               team="alpha", requested_model="auto", served_member="fake-small",
               route_reason="auto:cheapest", latency_ms=10.0, cost_usd=0.1, energy_j=1.0,
               energy_source="estimated:declared-j-per-token", counterfactual_member="large",
               counterfactual_cost_usd=0.5)  # and no counterfactual energy
    with gw.engine.begin() as conn:
        conn.execute(sa.insert(Decision), [row])
    page = sign_in(gw).get("/ui/dashboards?range=24h").text
    assert 'id="energy-saved-unknown"' in page
    assert "no energy figure for the reference member" in page
    assert 'id="no-saved-energy"' in page and 'id="chart-saved-energy"' not in page
    assert 'id="chart-saved-cost"' in page  # the cost counterfactual is known


def test_pool_page_says_parameter_counts_as_people_do(make_gateway: Any, fake_url: str) -> None:
    from tests.conftest import default_pool
    from web.templating import params

    assert [params(b) for b in (0.00969, 1.5, 70, 0.5, None)] == [
        "9.7M", "1.5B", "70B", "500M", "—"]
    pool = default_pool(fake_url)
    pool[1]["energy"] = {"active_params_b": 0.00969}
    page = sign_in(make_gateway(pool)).get("/ui").text
    assert "9.7M active params" in page and "0.00969" not in page
