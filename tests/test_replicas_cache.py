"""Two replicas sharing the semantic cache through Redis, and upstream faults seen from both:
an answer cached by one is served by the other, never to another team; 429s, hangs and
streams that stop mid-way each leave their row, and only real failures cool a member down,
on both replicas alike."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import httpx
import pytest
import sqlalchemy as sa

from tests.conftest import PG_BASE
from tests.replica_support import (
    Replica,
    isolated_stores,
    new_replica,
    replica_env,
    start_all,
    wait_until,
    write_pool,
)

REDIS = os.environ.get("GREENGATE_TEST_REDIS", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="module")
def duo(fake_server, tmp_path_factory) -> Iterator[tuple[list[Replica], sa.Engine]]:
    server, _ = fake_server
    folder = tmp_path_factory.mktemp("cache-replicas")
    with isolated_stores("cache", PG_BASE, REDIS) as (schema, prefix):
        db = f"{PG_BASE}?options=-csearch_path%3D{schema}"
        cfg = write_pool(folder / "pool.yaml", server.url + "/v1",
                         timeouts={"first_byte_s": 1.0, "total_s": 5.0})
        env = replica_env(db, REDIS, prefix, folder / "state", cfg, cache=True,
                          cache_redis=True, log_flush_interval_s=0.05, retries=0,
                          cooldown_failures=3, cooldown_failure_ratio=0.5, cooldown_s=30)
        reps = [new_replica(f"c{i}", folder, {**env, "GREENGATE_STATE_DIR": str(
            folder / f"state-{i}")}) for i in range(2)]
        engine = sa.create_engine(db)
        try:
            start_all(reps)
            yield reps, engine
        finally:
            for r in reps:
                r.stop()
            engine.dispose()


def _key(r: Replica, team: str) -> str:
    resp = r.post("/admin/keys", {"team": team, "allowed_models": None})
    assert resp.status_code == 201, resp.text
    return resp.json()["key"]


def _chat(r: Replica, key: str, text: str, model: str = "m", **kw) -> httpx.Response:
    # temperature 0: cache-eligible (an absent one counts as 1, above the 0.3 default cap)
    return r.post("/v1/chat/completions", {"model": model, "temperature": 0, "messages": [
        {"role": "user", "content": text}], **kw}, key=key)


def _row(engine: sa.Engine, rid: str) -> dict:
    found: dict = {}

    def there() -> bool:
        with engine.connect() as c:
            row = c.execute(sa.text("SELECT status, served_member, error FROM decisions "
                                    "WHERE id = :i"), {"i": rid}).mappings().first()
        if row is not None:
            found.update(row)
        return row is not None

    assert wait_until(there, 10, 0.05) is not None, f"no row for {rid}"
    return found


def test_an_answer_cached_on_one_replica_is_served_by_the_other_never_across_teams(
        duo, fake) -> None:
    (a, b), engine = duo
    team = "cache-" + uuid.uuid4().hex[:6]
    key = _key(a, team)
    others = {r.name: _key(a, f"{team}-other-{r.name}") for r in (a, b)}
    text = f"What is the capital of France? {uuid.uuid4().hex[:4]}"
    first = _chat(a, key, text)
    assert first.status_code == 200 and first.headers["x-greengate-member"] == "m"
    upstream_calls = len(fake.requests)

    def hit_on_b() -> bool:
        return _chat(b, key, text).headers.get("x-greengate-member") == "cache"

    assert wait_until(hit_on_b, 5, 0.05) is not None  # written off the response path
    hit = _chat(b, key, text)
    assert hit.json()["choices"][0]["message"]["content"] == \
        first.json()["choices"][0]["message"]["content"]
    assert _row(engine, hit.headers["x-request-id"])["served_member"] == "cache"
    calls_before_other = len(fake.requests)
    assert calls_before_other - upstream_calls <= 5  # the polls that ran before the write
    for r in (a, b):  # another team asks the same: never the first team's answer
        resp = _chat(r, others[r.name], text)
        assert resp.status_code == 200 and resp.headers["x-greengate-member"] == "m"


def test_429s_do_not_cool_a_member_down_anywhere_and_leave_their_rows(duo, fake) -> None:
    (a, b), engine = duo
    key = _key(a, "r429-" + uuid.uuid4().hex[:6])
    fake.fail_statuses = [429] * 6
    fake.retry_after = "1"
    for i in range(6):
        resp = _chat(a, key, f"busy {i}")
        assert resp.status_code == 429
        assert _row(engine, resp.headers["x-request-id"])["status"] == 429
    for r in (a, b):
        assert r.get("/health/ready").json()["members"]["m"] != "cooldown"


def test_hangs_and_streams_cut_mid_way_leave_rows_and_cool_the_member_on_both(
        duo, fake) -> None:
    (a, b), engine = duo
    key = _key(a, "faults-" + uuid.uuid4().hex[:6])
    fake.latency_s = 3.0  # past the member's 1 s first-byte timeout: a hang
    # m2: the cache test's traffic went to m (the breaker weighs failures against traffic)
    hung = _chat(a, key, f"hang {uuid.uuid4().hex[:4]}", model="m2")
    assert hung.status_code == 504, hung.text
    assert _row(engine, hung.headers["x-request-id"])["status"] == 504
    fake.latency_s = 0.0
    fake.disconnect_after_chunks = 2  # the provider drops the stream after two chunks
    for i in range(3):
        with httpx.stream("POST", b.url + "/v1/chat/completions", headers=b.headers(key),
                          json={"model": "m2", "stream": True, "messages": [
                              {"role": "user", "content": f"a long answer please {i}"}]},
                          timeout=10) as s:
            rid = s.headers["x-request-id"]
            body = b"".join(s.iter_raw())
        assert b"upstream_stream_error" in body and b"[DONE]" not in body
        assert _row(engine, rid)["status"] == 502
    fake.disconnect_after_chunks = None

    def cooling(r: Replica) -> bool:
        return r.get("/health/ready").json()["members"]["m2"] == "cooldown"

    # Four failed requests (one on a, three on b) of the few m2 saw: b cools m down, and a
    # hears of it.
    assert wait_until(lambda: cooling(b), 2, 0.05) is not None
    assert wait_until(lambda: cooling(a), 1, 0.01) is not None
