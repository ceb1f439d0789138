"""/v1/batches with carbon-aware scheduling: the openai SDK end to end (a batch run at once),
the scheduler on a fake feed and a fake clock (a batch waits for the clean hours and still
finishes inside its window), cancel, team scoping, and bad input naming the line."""

from __future__ import annotations

import asyncio
import io
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
import pytest
import sqlalchemy as sa
from openai import OpenAI

from gateway.auth import Principal
from gateway.batch_scheduler import plan
from gateway.batches import BatchService, ItemResult, parse_lines
from gateway.errors import GatewayError
from gateway.files import FileStore
from migrations import runner as migrate
from telemetry.carbon_feed import FunctionFeed, StaticProfile
from tests.conftest import Gateway, GatewayFactory


@pytest.fixture
def gw(make_gateway: GatewayFactory) -> Gateway:
    """A gateway whose batch runner looks for due batches ten times a second."""
    return make_gateway(batch_tick_s=0.1)


def _line(cid: str, text: str = "hi", url: str = "/v1/chat/completions") -> dict:
    return {"custom_id": cid, "method": "POST", "url": url,
            "body": {"model": "fake-small", "messages": [{"role": "user", "content": text}]}}


def _jsonl(lines: list) -> bytes:
    return b"\n".join(orjson.dumps(x) if not isinstance(x, bytes) else x for x in lines) + b"\n"


def _client(gw: Gateway, key: str | None = None) -> OpenAI:
    return OpenAI(base_url=gw.v1, api_key=key or gw.admin_key, max_retries=0)


def _wait_status(client: OpenAI, bid: str, want: set[str], timeout: float = 20.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        b = client.batches.retrieve(bid)
        if b.status in want:
            return b
        if time.monotonic() > deadline:
            raise AssertionError(f"batch {bid} is {b.status}")
        time.sleep(0.1)


def test_run_now_end_to_end(gw: Gateway) -> None:
    client = _client(gw)
    f = client.files.create(file=("in.jsonl", io.BytesIO(_jsonl(
        [_line("a", "one"), _line("b", "two"), _line("c", "three")]))), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                              completion_window="24h", metadata={"schedule": "now"})
    assert b.status == "validating" and b.object == "batch"
    done = _wait_status(client, b.id, {"completed", "failed"})
    assert done.status == "completed"
    assert done.request_counts.total == 3 and done.request_counts.completed == 3
    assert done.output_file_id and done.error_file_id is None
    assert done.completed_at >= done.in_progress_at >= done.created_at
    lines = [orjson.loads(x) for x in client.files.content(done.output_file_id).read()
             .splitlines()]
    by_id = {x["custom_id"]: x for x in lines}
    assert set(by_id) == {"a", "b", "c"}
    assert by_id["b"]["response"]["status_code"] == 200
    assert by_id["b"]["response"]["body"]["choices"][0]["message"]["content"] == \
        "You said: two"
    row = gw.decision(by_id["a"]["response"]["request_id"])  # every request has its row
    assert row["team"] is None and row["status"] == 200
    extra = done.model_extra or {}
    carbon = extra["carbon"]
    assert carbon["requests_with_energy"] == 3  # fake-small declares j_per_token
    assert carbon["gco2e"] > 0 and carbon["gco2e_at_submission_estimated"] > 0
    assert carbon["waiting_would_save_gco2e_estimated"] >= 0
    assert extra["schedule"]["reason"].startswith("metadata.schedule is 'now'")


def test_failed_requests_go_to_the_error_file(gw: Gateway) -> None:
    client = _client(gw)
    bad = _line("x")
    bad["body"]["model"] = "no-such-member"
    f = client.files.create(file=("in.jsonl", io.BytesIO(_jsonl([_line("ok"), bad]))),
                            purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                              completion_window="24h", metadata={"schedule": "now"})
    done = _wait_status(client, b.id, {"completed"})
    assert (done.request_counts.completed, done.request_counts.failed) == (1, 1)
    err = orjson.loads(client.files.content(done.error_file_id).read())
    assert err["custom_id"] == "x" and err["response"]["status_code"] == 404


def test_scheduled_batch_waits_and_can_be_cancelled(gw: Gateway) -> None:
    client = _client(gw)
    f = client.files.create(file=("in.jsonl", io.BytesIO(_jsonl([_line("a")]))),
                            purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                              completion_window="24h")
    sched = (b.model_extra or {})["schedule"]
    assert sched["start"] >= b.created_at
    assert sched["expected_g_per_kwh"] <= sched["submission_g_per_kwh"]
    assert sched["start"] + sched["run_s"] + sched["margin_s"] <= b.expires_at
    if sched["start"] > time.time() + 5:  # it waits for cleaner hours: cancel it
        c = client.batches.cancel(b.id)
        assert c.status == "cancelling"
        assert _wait_status(client, b.id, {"cancelled"}).status == "cancelled"
    assert [x.id for x in client.batches.list().data] == [b.id]


def test_other_team_cannot_see(gw: Gateway) -> None:
    a, other = _client(gw, gw.create_key("team-a")), _client(gw, gw.create_key("team-b"))
    f = a.files.create(file=("in.jsonl", io.BytesIO(_jsonl([_line("a")]))), purpose="batch")
    b = a.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                         completion_window="24h")
    r = httpx.get(gw.v1 + f"/batches/{b.id}", headers=gw.headers(other.api_key))
    assert r.status_code == 404
    assert other.batches.list().data == []
    r = httpx.post(gw.v1 + "/batches", headers=gw.headers(other.api_key), json={
        "input_file_id": f.id, "endpoint": "/v1/chat/completions", "completion_window": "24h"})
    assert r.status_code == 404 and r.json()["error"]["param"] == "input_file_id"


def test_malformed_line_is_named(gw: Gateway) -> None:
    up = httpx.post(gw.v1 + "/files", headers=gw.headers(), data={"purpose": "batch"},
                    files={"file": ("in.jsonl", _jsonl([_line("a"), b"{not json"]))})
    assert up.status_code == 400 and "Line 2" in up.json()["error"]["message"]
    with pytest.raises(GatewayError) as e:  # the batch's own check, for files stored otherwise
        parse_lines(_jsonl([_line("a"), b"[1]"]), "/v1/chat/completions")
    assert "line 2" in e.value.message and e.value.param == "input_file_id"


@pytest.mark.parametrize(("lines", "body", "param", "needle"), [
    ([_line("a"), _line("a")], {}, "input_file_id", "repeats line 1"),
    ([_line("a"), _line("b", url="/v1/embeddings")], {}, "input_file_id", "line 2"),
    ([{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions"}], {},
     "input_file_id", "line 1"),
    ([_line("a")], {"endpoint": "/v1/images"}, "endpoint", "endpoint"),
    ([_line("a")], {"completion_window": "forever"}, "completion_window", "hours"),
    ([_line("a")], {"metadata": {"schedule": "later"}}, "metadata.schedule", "now"),
])
def test_bad_input_creates_nothing(gw: Gateway, lines: list, body: dict, param: str,
                                   needle: str) -> None:
    up = httpx.post(gw.v1 + "/files", headers=gw.headers(), data={"purpose": "batch"},
                    files={"file": ("in.jsonl", _jsonl(lines))})
    assert up.status_code == 200, up.text  # the file is JSONL objects; the batch checks more
    r = gw.post("/v1/batches", {"input_file_id": up.json()["id"],
                                "endpoint": "/v1/chat/completions",
                                "completion_window": "24h", **body})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and needle in err["message"], err
    assert httpx.get(gw.v1 + "/batches", headers=gw.headers()).json()["data"] == []


# ---- the scheduler and the runner on a fake feed and a fake clock ----------------------------
def _dirty_now_clean_later(hours_until_clean: float, start: datetime) -> FunctionFeed:
    def g(t: datetime) -> float:
        return 100.0 if (t - start).total_seconds() >= hours_until_clean * 3600 else 400.0

    return FunctionFeed(g, "fake feed")


def test_plan_waits_for_clean_hours_inside_the_window() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    feed = _dirty_now_clean_later(6, now)
    p = plan(now, now + timedelta(hours=24), 1800, feed)
    assert p.start == now + timedelta(hours=6)
    assert (p.expected_g_per_kwh, p.submission_g_per_kwh) == (100.0, 400.0)
    late = plan(now, now + timedelta(hours=4), 1800, feed)  # clean hours after the window
    assert late.start + timedelta(seconds=late.run_s + late.margin_s) <= now + timedelta(
        hours=4)
    assert late.expected_g_per_kwh == 400.0
    a_bit_cleaner = FunctionFeed(lambda t: 300.0 if t >= now + timedelta(hours=6) else 400.0)
    assert plan(now, now + timedelta(hours=24), 1800, a_bit_cleaner).start > now
    busy = plan(now, now + timedelta(hours=24), 1800, a_bit_cleaner,
                load=lambda s, _: 1.0 if s >= now + timedelta(hours=6) else 0.0)
    assert busy.start < now + timedelta(hours=6)  # 300 x 1.5 there (the pool is full) > 400
    flat = plan(now, now + timedelta(hours=24), 600, StaticProfile([300.0] * 24))
    assert flat.start == now and "already" in flat.reason


def test_runner_on_fake_clock(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/b.db"
    migrate.upgrade(url)
    engine = sa.create_engine(url)
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    feed = _dirty_now_clean_later(5, now[0])
    files = FileStore(engine, 10_000_000)
    calls: list[str] = []

    async def execute(p: Principal, endpoint: str, body: dict) -> ItemResult:
        calls.append(body["messages"][0]["content"])
        return ItemResult(200, {"ok": True}, "rid", 3600.0, "estimated: test")

    svc = BatchService(engine, files, feed, execute, clock=lambda: now[0], concurrency=2,
                       est_request_s=1.0)
    principal = Principal(False, "t", None, "gg-x", None)
    f = files.create("t", "in.jsonl", "batch", _jsonl([_line(str(i), f"q{i}")
                                                       for i in range(4)]))
    b = svc.create(principal, "t", f.id, "/v1/chat/completions", "24h", None)
    assert b["schedule"]["start"] == int((now[0] + timedelta(hours=5)).timestamp())
    assert asyncio.run(svc.run_due()) == 0 and calls == []  # not yet
    now[0] += timedelta(hours=5)
    assert asyncio.run(svc.run_due()) == 4
    out = svc.get("t", b["id"])
    assert out["status"] == "completed" and out["request_counts"]["completed"] == 4
    carbon = out["carbon"]
    assert carbon["energy_wh"] == pytest.approx(4.0)
    assert carbon["gco2e"] == pytest.approx(4 * 0.001 * 100.0)
    assert carbon["gco2e_at_submission_estimated"] == pytest.approx(4 * 0.001 * 400.0)
    assert out["completed_at"] <= out["expires_at"]
    with pytest.raises(GatewayError):
        svc.get("other-team", b["id"])
    engine.dispose()


def test_two_runners_run_each_line_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/b.db"
    migrate.upgrade(url)
    from store.database import make_engine

    engine = make_engine(url)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    files = FileStore(engine, 10_000_000)
    calls: list[str] = []

    async def execute(p: Principal, endpoint: str, body: dict) -> ItemResult:
        calls.append(body["messages"][0]["content"])
        await asyncio.sleep(0.01)
        return ItemResult(200, {"ok": True}, "rid", None, None)

    feed = StaticProfile([300.0] * 24)
    a, b = (BatchService(engine, files, feed, execute, clock=lambda: now, concurrency=3)
            for _ in range(2))
    f = files.create("t", "in.jsonl", "batch", _jsonl([_line(str(i), f"q{i}")
                                                       for i in range(12)]))
    batch = a.create(Principal(False, "t", None, "gg-x", None), "t", f.id,
                     "/v1/chat/completions", "24h", {"schedule": "now"})

    async def both() -> None:
        await asyncio.gather(a.run_due(), b.run_due())

    asyncio.run(both())
    assert sorted(calls) == sorted(f"q{i}" for i in range(12))  # each line once
    out = a.get("t", batch["id"])
    assert out["status"] == "completed" and out["request_counts"]["completed"] == 12
    assert out["carbon"]["requests_without_energy"] == 12 and out["carbon"]["gco2e"] is None
    engine.dispose()
