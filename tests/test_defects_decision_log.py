"""Issue 12, defect 1: no request may wedge the decision log. Strings a caller controls are made
storable; a row the database still refuses is quarantined, not retried; readiness says when
the log falls behind; shutdown journals what it cannot write and the next start replays it."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
import sqlalchemy as sa

from migrations import runner as migrate
from store import database
from store.decision_log import DecisionLog
from store.schema import Decision
from store.storable import REPLACEMENT, clean_text, storable_decision
from tests.conftest import Gateway, GatewayFactory

NUL = "\u0000"


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/defects.db"
    return request.getfixturevalue("pg_url")


# ---- pure: storable strings --------------------------------------------------------------


def test_clean_text_replaces_nul_and_lone_surrogates_and_truncates() -> None:
    assert clean_text("ok") == ("ok", [])
    out, notes = clean_text("a\x00b\ud800c", 100)
    assert out == f"a{REPLACEMENT}b{REPLACEMENT}c" and notes == ["invalid characters replaced"]
    out, notes = clean_text("x" * 300, 256)
    assert len(out) == 256 and notes == ["truncated to 256 characters"]


def test_storable_decision_says_what_it_changed() -> None:
    row = {
        "id": "r1",
        "requested_model": "bad\x00model",
        "error": "e",
        "features": {"k\x00": ["v\ud83d"]},
        "attempts": None,
    }
    out = storable_decision(Decision.__table__, row)
    assert NUL not in out["requested_model"]
    assert out["features"]["storage_notes"] == [
        "requested_model: invalid characters replaced",
        "features key: invalid characters replaced",
        "features.k\x00[0]: invalid characters replaced",
    ]
    assert row["requested_model"] == "bad\x00model"  # the caller's dict is not changed


# ---- the gateway: NUL everywhere, and later rows still land ------------------------------


def _nul_requests(gw: Gateway) -> list[tuple[str, dict]]:
    return [
        (
            "/v1/chat/completions",
            {"model": f"bad{NUL}model", "messages": [{"role": "user", "content": "x"}]},
        ),
        (
            "/v1/chat/completions",
            {
                "model": "fake-small",
                "messages": [{"role": "user", "content": f"hi{NUL}there", "name": f"n{NUL}"}],
                "user": f"u{NUL}",
                "stop": [f"s{NUL}"],
            },
        ),
        (
            "/v1/chat/completions",
            {
                "model": "fake-small",
                "stream": True,
                "messages": [{"role": f"user{NUL}", "content": "x"}],
            },
        ),
        (
            "/v1/chat/completions",
            {"model": "x" * 5000, "messages": [{"role": "user", "content": "x"}]},
        ),
        ("/v1/completions", {"model": f"fake-small{NUL}", "prompt": f"p{NUL}"}),
        ("/v1/completions", {"model": "fake-small", "prompt": [f"p{NUL}", "q"]}),
        ("/v1/embeddings", {"model": "fake-embed", "input": f"e{NUL}"}),
        ("/v1/embeddings", {"model": f"fake-embed{NUL}", "input": ["e"]}),
    ]


def test_nul_in_every_field_does_not_wedge_the_log(
    make_gateway: GatewayFactory, db_url: str, fake
) -> None:
    gw = make_gateway(database_url=db_url)
    key = gw.create_key("team-nul")
    ids = []
    for path, body in _nul_requests(gw):
        r = gw.post(path, body, key=key)
        assert r.status_code < 500, (path, body, r.text)
        if r.status_code >= 400:
            assert set(r.json()["error"]) >= {"message", "type", "param", "code"}
        ids.append(r.headers["x-request-id"])
    # Feedback carries strings too: a comment and the request id itself.
    fb = gw.post(
        "/v1/feedback",
        {"request_id": ids[1], "thumbs": "up", "comment": f"great{NUL}answer"},
        key=key,
    )
    assert fb.status_code == 200, fb.text
    fb = gw.post("/v1/feedback", {"request_id": f"abc{NUL}", "score": 1}, key=key)
    assert fb.status_code == 404
    # Admin writes with NUL: a clear 4xx, never a 500.
    r = gw.post("/admin/keys", {"team": "team-nul", "name": f"k{NUL}"})
    assert r.status_code in (201, 400, 422), r.text
    r = httpx.put(
        gw.url + "/admin/policies/team-nul",
        headers=gw.headers(),
        timeout=10,
        json={"reference_member": f"m{NUL}"},
    )
    assert r.status_code < 500, r.text

    # Every row landed, and later requests' rows land too.
    rows = [gw.decision(rid) for rid in ids]
    assert rows[0]["status"] == 404
    assert REPLACEMENT in rows[0]["requested_model"]
    assert "requested_model: invalid characters replaced" in rows[0]["features"]["storage_notes"]
    assert len(rows[3]["requested_model"]) == 256
    later = [
        gw.post(
            "/v1/chat/completions",
            {"model": "fake-small", "messages": [{"role": "user", "content": f"after {i}"}]},
            key=key,
        )
        for i in range(5)
    ]
    for r in later:
        assert r.status_code == 200
        assert gw.decision(r.headers["x-request-id"])["status"] == 200
    with gw.engine.connect() as conn:
        comment = conn.execute(sa.text("SELECT comment FROM feedback")).scalar_one()
    assert comment == f"great{REPLACEMENT}answer"
    ready = httpx.get(gw.url + "/health/ready", timeout=10).json()
    assert ready["status"] == "ok" and ready["decisions_quarantined"] == 0


# ---- the writer on its own: split and quarantine, journal and replay ---------------------


def _row(rid: str, **kw) -> dict:
    return {
        "id": rid,
        "created_at": datetime.now(UTC),
        "endpoint": "chat/completions",
        "status": 200,
        "stream": False,
        "cache_hit": False,
        **kw,
    }


def _ids(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return set(conn.execute(sa.text("SELECT id FROM decisions")).scalars())
    finally:
        engine.dispose()


async def test_a_refused_row_is_quarantined_and_the_batch_lands(
    db_url: str, tmp_path: Path
) -> None:
    await asyncio.to_thread(migrate.upgrade, db_url)
    engine = database.make_engine(db_url)
    dlog = DecisionLog(engine, 1000, 100, 0.01, state_dir=tmp_path / "state")
    dlog.start()
    # Cleaning cannot save a row whose number does not fit the column: the database refuses
    # it (PostgreSQL: integer out of range; SQLite: too large to bind).
    for i in range(20):
        dlog.submit(_row(f"ok{i}", prompt_tokens=i))
    dlog.submit(_row("poison", prompt_tokens=2**70))
    for i in range(20, 40):
        dlog.submit(_row(f"ok{i}", prompt_tokens=i))
    await dlog.stop()
    engine.dispose()
    ids = _ids(db_url)
    assert {f"ok{i}" for i in range(40)} <= ids
    assert "poison" in ids  # its stub row: the id, status and why
    assert dlog.quarantined == 1 and dlog.recent_quarantine[0]["id"] == "poison"
    assert dlog.quarantine_path.read_text().count("\n") == 1
    assert dlog.journaled == 0


async def test_unreachable_database_journals_and_the_next_start_replays(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/j.db"
    await asyncio.to_thread(migrate.upgrade, url)
    state = tmp_path / "state"
    # A database that cannot be reached: every insert is a connection error.
    dead = sa.create_engine(
        "postgresql+psycopg://nobody@127.0.0.1:1/none", connect_args={"connect_timeout": 1}
    )
    dlog = DecisionLog(
        dead, 1000, 10, 0.01, state_dir=state, connect_retries=0, drain_timeout_s=0.5
    )
    dlog.start()
    for i in range(25):
        dlog.submit(_row(f"j{i}"))
    await asyncio.sleep(0.5)
    assert dlog.pending == 0 and dlog.journaled == 25  # on disk, not stuck in memory
    await dlog.stop()
    dead.dispose()
    assert dlog.journal_path.read_text().count("\n") == 25

    engine = database.make_engine(url)
    again = DecisionLog(engine, 1000, 10, 0.01, state_dir=state)
    assert again.journaled == 25
    again.start()
    deadline = time.monotonic() + 10
    while again.journaled and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await again.stop()
    engine.dispose()
    assert _ids(url) == {f"j{i}" for i in range(25)}
    assert not again.journal_path.exists() or again.journal_path.read_text() == ""


async def test_shutdown_journals_what_it_cannot_write_in_time(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    await asyncio.to_thread(migrate.upgrade, url)
    engine = database.make_engine(url)
    dlog = DecisionLog(engine, 1000, 5, 0.01, state_dir=tmp_path / "state", drain_timeout_s=0.2)
    slow_insert = dlog._insert

    def slow(rows: list[dict]) -> None:
        time.sleep(0.15)
        slow_insert(rows)

    dlog._insert = slow  # type: ignore[method-assign]
    dlog.start()
    for i in range(50):
        dlog.submit(_row(f"s{i}"))
    t = time.monotonic()
    await dlog.stop()
    assert time.monotonic() - t < 2  # bounded, not a wait for every batch
    assert dlog.journaled > 0
    await asyncio.sleep(0.3)  # an insert the cancel could not stop may still finish
    written = _ids(url)
    again = DecisionLog(engine, 1000, 50, 0.01, state_dir=tmp_path / "state")
    await again.replay()
    engine.dispose()
    assert _ids(url) == {f"s{i}" for i in range(50)}
    assert written < _ids(url)


async def test_readiness_bound(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/r.db"
    engine = database.make_engine(url)
    dlog = DecisionLog(engine, 1000, 500, 60, state_dir=tmp_path, ready_max_pending=3)
    for i in range(3):
        dlog.submit(_row(f"r{i}"))
    assert dlog.behind() is None
    dlog.submit(_row("r3"))
    assert "4 rows waiting" in (dlog.behind() or "")
    engine.dispose()


def test_ready_turns_unready_when_the_log_falls_behind(make_gateway: GatewayFactory, fake) -> None:
    gw = make_gateway(log_flush_interval_s=60, log_batch_size=1000, log_ready_max_pending=2)
    assert httpx.get(gw.url + "/health/ready", timeout=10).status_code == 200
    for i in range(3):
        assert (
            gw.post(
                "/v1/chat/completions",
                {"model": "fake-small", "messages": [{"role": "user", "content": f"{i}"}]},
            ).status_code
            == 200
        )
    r = httpx.get(gw.url + "/health/ready", timeout=10)
    assert r.status_code == 503
    assert "rows waiting" in r.json()["decision_log"]


def test_quarantine_is_listed_and_counted(make_gateway: GatewayFactory, fake) -> None:
    gw = make_gateway()
    r = httpx.get(gw.url + "/admin/decisions/quarantine", headers=gw.headers(), timeout=10)
    assert r.status_code == 200 and r.json()["quarantined"] == 0
    metrics = httpx.get(gw.url + "/metrics", timeout=10).text
    assert "greengate_decisions_quarantined 0.0" in metrics
    assert 'greengate_queue_depth{queue="decision_journal"}' in metrics


def test_quarantined_rows_are_listed_in_the_ui(make_gateway: GatewayFactory, fake) -> None:
    from tests.ui_support import sign_in

    gw = make_gateway()
    rt = gw.server.server.config.app.state.rt
    assert "Rows kept aside" not in sign_in(gw).get("/ui/decisions").text
    # What the writer does with a row the database refuses (its own test above finds one).
    rt.decisions._quarantine(_row("refused1", status=200, team="team-q"), ValueError("boom"))
    page = sign_in(gw).get("/ui/decisions").text
    assert "Rows kept aside" in page and "refused1" in page and "ValueError: boom" in page
    assert gw.decision("refused1")["error"].startswith("row quarantined: ValueError")
    metrics = httpx.get(gw.url + "/metrics", timeout=10).text
    assert "greengate_decisions_quarantined 1.0" in metrics
    listed = httpx.get(gw.url + "/admin/decisions/quarantine", headers=gw.headers(), timeout=10)
    assert listed.json()["recent"][0]["id"] == "refused1"


def test_nul_in_every_parameter_of_every_operation_is_never_a_500(
    make_gateway: GatewayFactory, db_url: str, fake
) -> None:
    """Every string path and query parameter in /openapi.json, and the admin bodies, with a
    NUL in it: a clear 4xx (or an answer), never a 500; the log still takes rows after."""
    gw = make_gateway(database_url=db_url)
    schema = httpx.get(gw.url + "/openapi.json", timeout=10).json()
    bad = f"x{NUL}y"
    tried = 0
    with httpx.Client(base_url=gw.url, headers=gw.headers(), timeout=30) as c:
        for path, ops in schema["paths"].items():
            for method, op in ops.items():
                params = op.get("parameters", [])
                strings = [p for p in params if "string" in json.dumps(p.get("schema", {}))]
                for target in strings:
                    url = path
                    query = {}
                    for p in params:
                        value = bad if p is target else "1"
                        if p["in"] == "path":
                            url = url.replace("{" + p["name"] + "}", quote(value, safe=""))
                        elif p is target:
                            query[p["name"]] = value
                    r = c.request(method.upper(), url, params=query)
                    tried += 1
                    assert r.status_code < 500, (method, path, target["name"], r.text)
        bodies = [
            ("POST", "/admin/teams", {"name": bad}),
            ("POST", "/admin/keys", {"team": "t", "name": bad, "allowed_models": [bad]}),
            (
                "POST",
                "/admin/budgets",
                {"scope": "team", "subject": bad, "metric": "usd", "period": "day", "limit": 1},
            ),
            ("PUT", "/admin/policies/t", {"reference_member": bad, "fallback_order": [bad]}),
            ("PUT", f"/admin/policies/{quote(bad)}", {}),
            ("POST", "/v1/feedback", {"request_id": bad, "score": 1, "comment": bad}),
        ]
        for method, url, body in bodies:
            r = c.request(method, url, json=body)
            tried += 1
            assert r.status_code < 500, (method, url, r.text)
            if r.status_code >= 400:
                assert set(r.json()["error"]) >= {"message", "type", "param", "code"}
        assert tried > 20
        r = c.post(
            "/v1/chat/completions",
            json={"model": "fake-small", "messages": [{"role": "user", "content": "ok"}]},
        )
        assert gw.decision(r.headers["x-request-id"])["status"] == 200


# ---- the writer and the event loop: the lock is let go between slices --------------------


async def test_the_writer_lets_the_event_loop_in_between_slices_of_a_batch(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch is prepared and inserted in slices with a sleep(0) between them (a waiting event
    loop takes the interpreter lock there, instead of after the 5 ms switch interval), and
    still lands as one transaction."""
    from store import decision_log

    await asyncio.to_thread(migrate.upgrade, db_url)
    engine = database.make_engine(db_url)
    yields: list[float] = []
    real_sleep = time.sleep

    def counting_sleep(s: float) -> None:
        yields.append(s)
        real_sleep(s)

    monkeypatch.setattr(decision_log, "WRITE_SLICE", 10)
    monkeypatch.setattr(decision_log.time, "sleep", counting_sleep)
    dlog = DecisionLog(engine, 1000, 100, 5.0, state_dir=tmp_path / "state")
    dlog.start()
    for i in range(25):
        dlog.submit(_row(f"s{i}", prompt_tokens=i))
    await dlog.stop()
    engine.dispose()
    monkeypatch.undo()
    assert {f"s{i}" for i in range(25)} <= _ids(db_url)
    # 25 rows in slices of 10: two yields preparing them, two inserting them.
    assert yields.count(0) == 4 and dlog.written == 25


def test_json_columns_are_written_by_orjson_and_fall_back_to_the_standard_library() -> None:
    assert database.json_dumps({"a": [1, 2.5, None, "é"]}) == '{"a":[1,2.5,null,"é"]}'
    assert database.json_dumps({1: "x"}) == '{"1":"x"}'  # as json.dumps: keys become strings
    # orjson stops at 64-bit integers; the standard library writes them
    assert json.loads(database.json_dumps({"n": 2**70})) == {"n": 2**70}
