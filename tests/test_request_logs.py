"""Opt-in request logs: off by default; a team that opts in keeps its prompts and answers,
PII-redacted before storage, for its retention; shown in the decision detail and searchable;
never to another team."""

from __future__ import annotations

import re
import time

import httpx
import sqlalchemy as sa

from tests.conftest import Gateway

SECRET = "write to ada.lovelace@example.com about card 4111 1111 1111 1111"


def _chat(gw: Gateway, key: str, text: str = SECRET) -> str:
    r = gw.post("/v1/chat/completions", {"model": "fake-small", "messages": [
        {"role": "user", "content": text}]}, key=key)
    assert r.status_code == 200, r.text
    return r.headers["x-request-id"]


def _logged(gw: Gateway, rid: str, timeout: float = 10.0) -> dict | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        d = httpx.get(gw.url + f"/admin/decisions/{rid}", headers=gw.headers())
        if d.status_code == 200 and d.json()["request_log"] is not None:
            return d.json()["request_log"]
        time.sleep(0.05)
    return None


def test_off_by_default(gw: Gateway) -> None:
    key = gw.create_key("quiet")
    rid = _chat(gw, key)
    gw.decision(rid)
    assert _logged(gw, rid, timeout=1.0) is None
    with gw.engine.connect() as c:
        assert c.execute(sa.text("SELECT count(*) FROM request_logs")).scalar_one() == 0


def test_opted_in_team_keeps_redacted_logs(gw: Gateway) -> None:
    r = gw.post("/admin/teams", {"name": "debuggers", "request_log_days": 7})
    assert r.status_code == 201 and r.json()["request_log_days"] == 7
    key, other = gw.create_key("debuggers"), gw.create_key("others")
    rid = _chat(gw, key)
    entry = _logged(gw, rid)
    assert entry is not None
    assert "ada.lovelace@example.com" not in entry["prompt"] + (entry["answer"] or "")
    assert "4111" not in entry["prompt"]
    assert "<EMAIL_ADDRESS_1>" in entry["prompt"] and "user: write to" in entry["prompt"]
    assert entry["redactions"]["EMAIL_ADDRESS"] >= 1
    with gw.engine.connect() as c:  # what is stored, not only what is shown
        stored = c.execute(sa.text("SELECT prompt, answer FROM request_logs")).one()
    assert "example.com" not in stored[0] and "example.com" not in (stored[1] or "")
    found = httpx.get(gw.url + "/admin/request-logs", params={"q": "write to"},
                      headers=gw.headers()).json()
    assert [e["id"] for e in found] == [rid]
    assert httpx.get(gw.url + "/admin/request-logs", params={"q": "nothing like it"},
                     headers=gw.headers()).json() == []
    other_rid = _chat(gw, other, "hello there")  # the other team did not opt in
    gw.decision(other_rid)
    assert _logged(gw, other_rid, timeout=1.0) is None
    off = httpx.patch(gw.url + "/admin/teams/debuggers", json={"request_log_days": None},
                      headers=gw.headers())
    assert off.status_code == 200 and off.json()["request_log_days"] is None
    later = _chat(gw, key, "after opting out")
    gw.decision(later)
    assert _logged(gw, later, timeout=1.0) is None


def test_streamed_answers_and_retention(gw: Gateway) -> None:
    gw.post("/admin/teams", {"name": "streamers", "request_log_days": 0.00001})  # ~1 s
    key = gw.create_key("streamers")
    with httpx.stream("POST", gw.v1 + "/chat/completions", headers=gw.headers(key), json={
            "model": "fake-small", "stream": True,
            "messages": [{"role": "user", "content": "stream this"}]}, timeout=30) as r:
        rid = r.headers["x-request-id"]
        r.read()
    entry = _logged(gw, rid)
    assert entry is not None and entry["answer"] == "You said: stream this"
    time.sleep(1.2)
    assert _logged(gw, rid, timeout=0.5) is None  # expired: no longer shown


def test_bad_retention_is_refused(gw: Gateway) -> None:
    r = gw.post("/admin/teams", {"name": "bad", "request_log_days": 0})
    assert r.status_code == 422 and r.json()["error"]["param"] == "request_log_days"


def _signed_in(gw: Gateway, key: str) -> httpx.Client:
    c = httpx.Client(base_url=gw.url, timeout=30)
    token = re.search(r'name="csrf" value="([^"]+)"', c.get("/ui/login").text).group(1)
    r = c.post("/ui/login", data={"key": key, "csrf": token, "next": "/ui"})
    assert r.status_code in (302, 303), r.text
    return c


def test_ui_shows_and_searches_logs(gw: Gateway) -> None:
    gw.post("/admin/teams", {"name": "readers", "request_log_days": 1})
    key = gw.create_key("readers")
    rid = _chat(gw, key)
    assert _logged(gw, rid) is not None
    admin = _signed_in(gw, gw.admin_key)
    page = admin.get(f"/ui/decisions/{rid}").text
    assert "Prompt and answer" in page and "&lt;EMAIL_ADDRESS_1&gt;" in page
    assert "ada.lovelace@example.com" not in page
    found = admin.get("/ui/decisions", params={"text": "write to"}).text
    assert f"/ui/decisions/{rid}" in found
    team = _signed_in(gw, key)  # the team's own session sees its own logs
    assert rid in team.get("/ui/decisions", params={"text": "write to"}).text
    outsider = _signed_in(gw, gw.create_key("strangers"))
    assert rid not in outsider.get("/ui/decisions", params={"text": "write to"}).text
