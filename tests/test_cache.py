"""Semantic cache (routing/cache/): keys, hits, isolation, expiry, eviction, persistence.

Synthetic unit vectors stand in for MiniLM embeddings, so no model is loaded. Every test runs
on MemoryStore and on RedisStore (127.0.0.1:6379, a fresh key prefix per test, removed
afterwards; skipped when Redis is not reachable).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from gateway.cache_persistence import SqlPersister, load_from_sql, save_entry
from routing.cache import (
    CacheKey,
    CacheStore,
    Entry,
    MemoryStore,
    RedisStore,
    SemanticCache,
    context_hash,
    entry_id,
    exact_key,
    last_turn_text,
    make_key,
)
from routing.cache.stores import _Matrix

REDIS_URL = os.environ.get("GREENGATE_TEST_REDIS", "redis://127.0.0.1:6379/0")
T0 = 1_800_000_000.0  # injected "now"
RESPONSE = {"id": "chatcmpl-1", "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris."},
                         "finish_reason": "stop"}]}  # fmt: skip


def unit(seed: int, dim: int = 384) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def at_cosine(v: np.ndarray, cos: float, seed: int = 99) -> np.ndarray:
    """A unit vector whose cosine with unit vector `v` is exactly `cos`."""
    u = unit(seed, v.shape[0])
    u = u - float(u @ v) * v
    u /= np.linalg.norm(u)
    return (cos * v + np.sqrt(1 - cos * cos) * u).astype(np.float32)


def chat(question: str, system: str | None = None, **params: object) -> dict:
    msgs = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": question}
    ]
    return {"model": "auto", "messages": msgs, **params}


def key(team: str, name: str, vec: np.ndarray | None, ctx: str = "ctx", task: str | None = None):
    return CacheKey(team, exact_key(chat(name)), ctx, vec, task)


def _redis_or_skip() -> None:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=0.5).ping()
    except Exception:
        pytest.skip("Redis is not reachable")


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    import redis

    _redis_or_skip()
    prefix = f"gg-test-cache:{uuid.uuid4().hex}"
    yield prefix
    r = redis.Redis.from_url(REDIS_URL)
    keys = list(r.scan_iter(f"{prefix}:*"))
    if keys:
        r.delete(*keys)
    r.close()


@pytest.fixture(params=["memory", "redis"])
def store_factory(request: pytest.FixtureRequest):
    """A function returning a store; for Redis every call is a new replica on the same data."""
    if request.param == "memory":
        shared = MemoryStore()
        return lambda: shared
    prefix = request.getfixturevalue("redis_prefix")
    return lambda: RedisStore(REDIS_URL, prefix=prefix)


# -- keys -------------------------------------------------------------------------------------


def test_exact_key_ignores_order_and_whitespace_but_not_parameters() -> None:
    question = {"role": "user", "content": "What is  the capital\nof France? "}
    a = {"model": "auto", "temperature": 0.7, "max_tokens": 100, "messages": [question]}
    b = {"messages": [{"content": " What is the capital of France?", "role": "user"}],
         "max_tokens": 100.0, "model": "auto", "temperature": 0.7, "stream": True,
         "user": "someone", "stream_options": {"include_usage": True}}  # fmt: skip
    parts = dict(a, messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is the capital of France?"}]}])  # fmt: skip
    assert exact_key(a) == exact_key(b) == exact_key(parts)
    changes = [
        {"temperature": 0.2},
        {"model": "gpt-small"},
        {"max_tokens": 50},
        {"seed": 1},
        {"response_format": {"type": "json_object"}},
        {"messages": [{"role": "user", "content": "What is the capital of Spain?"}]},
        {"messages": [{"role": "system", "content": "Be brief."}, question]},
    ]
    for change in changes:
        assert exact_key({**a, **change}) != exact_key(a), change
    assert len(exact_key(a)) == 64 and int(exact_key(a), 16) >= 0


def test_context_hash_is_the_conversation_without_the_last_question() -> None:
    q1, q2 = "What is the capital of France?", "Which city is France's capital?"
    assert context_hash(chat(q1)) == context_hash(chat(q2))  # same (empty) context
    assert context_hash(chat(q1, "You are a pirate.")) != context_hash(chat(q1))
    earlier = [{"role": "user", "content": "Tell me about Spain."},
               {"role": "assistant", "content": "Spain is ..."}]  # fmt: skip
    other = [{"role": "user", "content": "Tell me about Italy."},
             {"role": "assistant", "content": "Italy is ..."}]  # fmt: skip
    follow = {"role": "user", "content": "And its capital?"}
    assert context_hash({"model": "auto", "messages": [*earlier, follow]}) != context_hash(
        {"model": "auto", "messages": [*other, follow]}
    )
    # answer-shaping parameters and the numbers of the question are part of the context
    assert context_hash(chat(q1, response_format={"type": "json_object"})) != context_hash(chat(q1))
    assert context_hash(chat(q1, model="m2")) != context_hash(chat(q1))
    assert context_hash(chat(q1, temperature=0.1)) == context_hash(chat(q1))
    assert context_hash(chat("What is 17*23?")) != context_hash(chat("What is 17*24?"))
    assert context_hash(chat("Is 1,000 big?")) == context_hash(chat("Would 1000 be big?"))
    # tool results after the question are context: another result, another answer
    call = {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
            "function": {"name": "weather", "arguments": "{}"}}]}  # fmt: skip
    sunny = [*chat("Weather in Paris?")["messages"], call,
             {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]  # fmt: skip
    rainy = [*sunny[:-1], {"role": "tool", "tool_call_id": "c1", "content": "rain"}]
    assert context_hash({"messages": sunny}) != context_hash({"messages": rainy})
    assert last_turn_text({"messages": sunny}) == "Weather in Paris?"
    assert last_turn_text({"prompt": "plain"}) == "plain"
    assert exact_key(chat("odd \ud800 text")) != exact_key(chat("odd text"))


def test_entry_ids_are_per_team() -> None:
    k = exact_key(chat("hello"))
    assert entry_id("a", k) != entry_id("b", k)


# -- hits and misses --------------------------------------------------------------------------


def test_exact_hit(store_factory) -> None:
    cache = SemanticCache(store_factory())
    body = chat("What is the capital of France?")
    k = make_key(body, "t1", unit(1))
    assert cache.lookup(k, now=T0) is None
    eid = cache.put(k, RESPONSE, "member-a", now=T0)
    hit = cache.lookup(make_key(dict(body, stream=True), "t1", None), now=T0 + 5)
    assert hit is not None and hit.kind == "exact" and hit.similarity == 1.0
    assert hit.response == RESPONSE and hit.member == "member-a" and hit.entry_id == eid
    assert hit.age_s == pytest.approx(5.0)
    hit.response["choices"] = []  # a caller's changes do not reach the cache
    assert cache.lookup(k, now=T0 + 6).response == RESPONSE
    s = cache.stats()
    assert (s["lookups"], s["exact_hits"], s["misses"], s["puts"]) == (3, 2, 1, 1)


def test_semantic_hit_above_threshold_and_miss_below(store_factory) -> None:
    per_task = {"code": 0.95, "math": 1.01}
    cache = SemanticCache(store_factory(), threshold=0.9, task_thresholds=per_task)
    v = unit(1)
    cache.put(key("t1", "stored", v), RESPONSE, "m", now=T0)
    cache.put(key("t1", "unrelated", unit(2)), {"other": True}, "m", now=T0)
    hit = cache.lookup(key("t1", "paraphrase", at_cosine(v, 0.93)), now=T0)
    assert hit is not None and hit.kind == "semantic" and hit.response == RESPONSE
    assert hit.similarity == pytest.approx(0.93, abs=1e-4)
    assert cache.lookup(key("t1", "paraphrase", at_cosine(v, 0.87)), now=T0) is None
    # per-task thresholds: stricter for code, semantic hits off (> 1) for math
    assert cache.lookup(key("t1", "p", at_cosine(v, 0.93), task="code"), now=T0) is None
    assert cache.lookup(key("t1", "p", at_cosine(v, 0.96), task="code"), now=T0) is not None
    assert cache.lookup(key("t1", "p", v, task="math"), now=T0) is None
    assert cache.lookup(key("t1", "stored", v, task="math"), now=T0).kind == "exact"
    # an unnormalised query is normalised first
    assert cache.lookup(key("t1", "p", 3.0 * at_cosine(v, 0.93)), now=T0) is not None
    assert cache.stats()["semantic_hits"] == 3


def test_teams_never_see_each_other(store_factory) -> None:
    cache = SemanticCache(store_factory(), threshold=0.9)
    v = unit(1)
    cache.put(key("team-a", "q", v), RESPONSE, "m", now=T0)
    # same request, same context, same embedding: nothing for team B, exact or semantic
    assert cache.lookup(key("team-b", "q", v), now=T0) is None
    assert cache.lookup(key("team-b", "other", v), now=T0) is None
    other = SemanticCache(store_factory(), threshold=0.9)  # another replica sees the same
    assert other.lookup(key("team-b", "q", v), now=T0) is None
    cache.put(key("team-b", "q", v), {"b": 1}, "m", now=T0)
    assert cache.lookup(key("team-a", "q", v), now=T0).response == RESPONSE
    assert other.lookup(key("team-b", "x", v), now=T0).response == {"b": 1}
    assert cache.lookup(key("team-a", "x", v), now=T0).response == RESPONSE
    # a team name cannot reach into another's keys
    assert cache.lookup(key("team-a:idx", "q", v), now=T0) is None
    assert cache.lookup(key("team-*", "q", v), now=T0) is None


def test_same_question_in_another_conversation_misses(store_factory) -> None:
    cache = SemanticCache(store_factory(), threshold=0.9)
    v = unit(1)
    first = chat("And what is its population?", "We are talking about Paris.")
    second = chat("And what is its population?", "We are talking about Lyon.")
    cache.put(make_key(first, "t1", v), RESPONSE, "m", now=T0)
    assert cache.lookup(make_key(second, "t1", v), now=T0) is None
    assert cache.lookup(make_key(second, "t1", at_cosine(v, 0.99)), now=T0) is None
    reworded = chat("and what's its population", "We are talking about Paris.")
    hit = cache.lookup(make_key(reworded, "t1", at_cosine(v, 0.99)), now=T0)
    assert hit is not None and hit.kind == "semantic"


def test_ttl_expiry(store_factory) -> None:
    cache = SemanticCache(store_factory(), threshold=0.9, ttl_s=60)
    v = unit(1)
    cache.put(key("t1", "q", v), RESPONSE, "m", now=T0)
    assert cache.lookup(key("t1", "q", v), now=T0 + 59).kind == "exact"
    assert cache.lookup(key("t1", "p", v), now=T0 + 59).kind == "semantic"
    assert cache.lookup(key("t1", "q", v), now=T0 + 60) is None
    assert cache.lookup(key("t1", "p", v), now=T0 + 61) is None
    cache.put(key("t1", "q", v), {"fresh": 1}, "m", now=T0 + 100)  # a new answer, a new TTL
    assert cache.lookup(key("t1", "p", v), now=T0 + 150).response == {"fresh": 1}


def test_lru_eviction_keeps_recently_used(store_factory) -> None:
    store = store_factory()
    cache = SemanticCache(store, threshold=0.99, max_entries_per_team=3)
    vecs = [unit(i) for i in range(5)]
    for i in range(3):
        cache.put(key("t1", f"q{i}", vecs[i]), {"i": i}, "m", now=T0 + i)
    cache.put(key("t2", "q0", vecs[0]), {"other team": 1}, "m", now=T0)
    assert cache.lookup(key("t1", "q0", vecs[0]), now=T0 + 10) is not None  # q0 used: recent
    cache.put(key("t1", "q3", vecs[3]), {"i": 3}, "m", now=T0 + 11)  # q1 is the LRU one
    assert store.count("t1") == 3
    assert cache.lookup(key("t1", "q1", vecs[1]), now=T0 + 12) is None
    assert cache.lookup(key("t1", "p1", vecs[1]), now=T0 + 12) is None  # gone from the index
    for i in (0, 2, 3):
        assert cache.lookup(key("t1", f"q{i}", vecs[i]), now=T0 + 12).response == {"i": i}
    assert cache.lookup(key("t2", "q0", vecs[0]), now=T0 + 12) is not None  # per-team bound
    assert cache.stats()["evicted"] == 1


def test_full_team_drops_expired_entries_before_used_ones(store_factory) -> None:
    cache = SemanticCache(store_factory(), ttl_s=100, max_entries_per_team=2)
    cache.put(key("t1", "old", unit(0)), {"i": 0}, "m", now=T0)
    cache.put(key("t1", "new", unit(1)), {"i": 1}, "m", now=T0 + 90)
    assert cache.lookup(key("t1", "old", None), now=T0 + 95) is not None  # old: most recent use
    cache.put(key("t1", "newer", unit(2)), {"i": 2}, "m", now=T0 + 101)  # old has expired
    assert cache.lookup(key("t1", "new", None), now=T0 + 102).response == {"i": 1}
    assert cache.lookup(key("t1", "newer", None), now=T0 + 102).response == {"i": 2}


def test_invalidate_drops_only_that_team(store_factory) -> None:
    cache = SemanticCache(store_factory(), threshold=0.9)
    v = unit(1)
    for team in ("a", "b"):
        cache.put(key(team, "q", v), {"team": team}, "m", now=T0)
        cache.put(key(team, "r", unit(2)), {"team": team}, "m", now=T0)
    assert cache.invalidate("a") == 2
    assert cache.lookup(key("a", "q", v), now=T0) is None
    assert cache.lookup(key("a", "p", v), now=T0) is None
    assert cache.lookup(key("b", "q", v), now=T0).response == {"team": "b"}
    assert cache.lookup(key("b", "p", v), now=T0).response == {"team": "b"}
    assert cache.invalidate("a") == 0
    cache.put(key("a", "q", v), {"team": "a", "again": 1}, "m", now=T0)  # usable afterwards
    assert cache.lookup(key("a", "p", v), now=T0).response == {"team": "a", "again": 1}


# -- RedisStore across replicas ---------------------------------------------------------------


def test_redis_replicas_share_entries_and_invalidations(redis_prefix: str) -> None:
    a = SemanticCache(RedisStore(REDIS_URL, prefix=redis_prefix), threshold=0.9)
    store_b = RedisStore(REDIS_URL, prefix=redis_prefix)
    b = SemanticCache(store_b, threshold=0.9)
    v, w = unit(1), unit(2)
    assert b.lookup(key("t", "p", v), now=T0) is None  # b's mirror of team t: empty
    a.put(key("t", "q", v), {"n": 1}, "m", now=T0)
    assert b.lookup(key("t", "p", at_cosine(v, 0.95)), now=T0).response == {"n": 1}
    a.put(key("t", "r", w), {"n": 2}, "m", now=T0)
    assert b.lookup(key("t", "p", w), now=T0).response == {"n": 2}
    assert store_b.full_syncs == 1  # later changes came from the change log
    a.invalidate("t")
    assert b.lookup(key("t", "p", w), now=T0) is None
    a.put(key("t", "s", w), {"n": 3}, "m", now=T0)
    assert b.lookup(key("t", "p", w), now=T0).response == {"n": 3}


def test_redis_replica_behind_the_log_reloads(redis_prefix: str) -> None:
    a = SemanticCache(RedisStore(REDIS_URL, prefix=redis_prefix, log_max=2), threshold=0.9)
    store_b = RedisStore(REDIS_URL, prefix=redis_prefix, log_max=2)
    b = SemanticCache(store_b, threshold=0.9)
    assert b.lookup(key("t", "p", unit(0)), now=T0) is None
    for i in range(6):
        a.put(key("t", f"q{i}", unit(i)), {"i": i}, "m", now=T0)
    assert b.lookup(key("t", "p", unit(0)), now=T0).response == {"i": 0}
    assert b.lookup(key("t", "p", unit(5)), now=T0).response == {"i": 5}
    assert store_b.full_syncs == 2


# -- failures ---------------------------------------------------------------------------------


class BrokenStore(CacheStore):
    def fetch(self, team, eid, now):
        raise ConnectionError("down")

    def search(self, team, context_hash, embedding, now):
        raise ConnectionError("down")

    def put(self, entry, max_entries, now):
        raise ConnectionError("down")

    def delete_team(self, team):
        return 0

    def count(self, team=None):
        raise ConnectionError("down")


def test_store_failures_are_misses_not_errors() -> None:
    cache = SemanticCache(BrokenStore())
    k = key("t", "q", unit(1))
    assert cache.lookup(k) is None
    cache.put(k, RESPONSE, "m")
    s = cache.stats()
    assert (s["errors"], s["misses"], s["puts"], s["entries"]) == (2, 1, 0, None)


def test_unserialisable_response_is_not_cached() -> None:
    cache = SemanticCache(MemoryStore())
    k = key("t", "q", unit(1))
    assert cache.put(k, {"bad": object()}, "m") == entry_id("t", k.exact)
    assert cache.lookup(k) is None and cache.stats()["errors"] == 1


def test_redis_down_is_a_miss() -> None:
    cache = SemanticCache(RedisStore("redis://127.0.0.1:1/0", timeout_s=0.05))
    k = key("t", "q", unit(1))
    cache.put(k, RESPONSE, "m")
    assert cache.lookup(k) is None and cache.stats()["errors"] == 2


# -- the matrix -------------------------------------------------------------------------------


def test_matrix_grows_reuses_rows_and_finds_the_best() -> None:
    rng = np.random.default_rng(0)
    m = _Matrix(16, capacity=4)
    vecs = rng.standard_normal((3000, 16)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    for i, v in enumerate(vecs):
        m.upsert(f"e{i}", i % 3, T0 + 10, v)
    assert len(m) == 3000 and m.emb.shape[0] == 4096
    for i in range(0, 3000, 2):
        m.remove(f"e{i}")
    for i in [*range(1, 3000, 4), 3]:  # under a quarter of the rows live: compacted
        m.remove(f"e{i}")
    live = [i for i in range(4, 3000) if i % 4 == 3]
    assert len(m) == len(live) and m.hi < 3000
    q = rng.standard_normal(16).astype(np.float32)
    q /= np.linalg.norm(q)
    for code in range(3):
        cands = [i for i in live if i % 3 == code]
        want = max(cands, key=lambda i: float(vecs[i] @ q))
        eid, sim = m.best(code, q, T0)
        assert eid == f"e{want}" and sim == pytest.approx(float(vecs[want] @ q), abs=1e-5)
    assert m.best(0, q, T0 + 10) is None  # all expired
    m.upsert("late", 0, T0 + 20, q)
    assert m.best(0, q, T0 + 10) == ("late", pytest.approx(1.0))


# -- SQL persistence --------------------------------------------------------------------------


def test_sql_round_trip_skips_expired_rows(tmp_path: Path) -> None:
    from store.schema import Base, CacheEntry

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'cache.db'}")
    Base.metadata.create_all(engine, tables=[CacheEntry.__table__])
    persister = SqlPersister(engine)
    cache = SemanticCache(MemoryStore(), threshold=0.9, ttl_s=100, persist=persister)
    v, w = unit(1), unit(2)
    cache.put(key("a", "old", w), {"old": 1}, "m", now=T0 - 150)  # expired by T0
    cache.put(key("a", "q", v, task="qa"), RESPONSE, "m1", now=T0)
    cache.put(key("b", "q", v), {"team": "b"}, None, now=T0)
    cache.put(key("a", "q", v, task="qa"), RESPONSE, "m2", now=T0 + 1)  # replaces the row
    persister.flush()
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(CacheEntry)).scalar() == 3

    fresh = SemanticCache(MemoryStore(), threshold=0.9, ttl_s=100)
    assert load_from_sql(engine, fresh, now=T0 + 10) == 2
    hit = fresh.lookup(key("a", "q", v), now=T0 + 10)
    assert hit.kind == "exact" and hit.response == RESPONSE and hit.member == "m2"
    assert hit.age_s == pytest.approx(9.0)
    assert fresh.lookup(key("a", "p", at_cosine(v, 0.95)), now=T0 + 10).kind == "semantic"
    assert fresh.lookup(key("a", "old", w), now=T0 + 10) is None
    assert fresh.lookup(key("b", "p", v), now=T0 + 10).response == {"team": "b"}
    assert fresh.lookup(key("b", "p", v), now=T0 + 200) is None  # still expires on time
    with engine.connect() as conn:  # the expired row was purged on load
        assert conn.execute(sa.select(sa.func.count()).select_from(CacheEntry)).scalar() == 2

    cache.invalidate("a")  # the persister deletes the team's rows too
    persister.flush()
    again = SemanticCache(MemoryStore(), threshold=0.9, ttl_s=100)
    assert load_from_sql(engine, again, now=T0 + 10) == 1
    assert again.lookup(key("a", "q", v), now=T0 + 10) is None
    persister.close()


def test_save_entry_without_embedding(tmp_path: Path) -> None:
    from store.schema import Base, CacheEntry

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'cache.db'}")
    Base.metadata.create_all(engine, tables=[CacheEntry.__table__])
    e = Entry(entry_id("t", "x"), "t", "ctx", None, None, RESPONSE, None, T0, T0 + 60, 3)
    save_entry(engine, e)
    cache = SemanticCache(MemoryStore())
    assert load_from_sql(engine, cache, now=T0) == 1
    assert cache.lookup(CacheKey("t", "x", "ctx", unit(1)), now=T0).kind == "exact"
