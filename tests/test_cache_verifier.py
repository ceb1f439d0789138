"""The semantic cache's pair verifier (routing.cache.verifier) and how the cache uses it:
per-mode decisions (strict / balanced / off), the lookup detail the decision row records,
the cached question kept through SQL and Redis, and the pair features."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from gateway.cache_persistence import load_from_sql, save_entry
from routing.cache import (
    CacheKey,
    Entry,
    MemoryStore,
    RedisStore,
    SemanticCache,
    entry_id,
    exact_key,
    make_key,
)
from routing.cache.verifier import MAX_SIDE_TOKENS, MODES, ModeRule, PairVerifier, pair_ids

T0 = 1_800_000_000.0
REDIS_URL = os.environ.get("GREENGATE_TEST_REDIS", "redis://127.0.0.1:6379/0")


def unit(seed: int, dim: int = 384) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def at_cosine(v: np.ndarray, cos: float, seed: int = 99) -> np.ndarray:
    u = unit(seed, v.shape[0])
    u = u - float(u @ v) * v
    u /= np.linalg.norm(u)
    return (cos * v + np.sqrt(1 - cos * cos) * u).astype(np.float32)


def chat(q: str) -> dict:
    return {"model": "auto", "messages": [{"role": "user", "content": q}]}


def key(q: str, vec: np.ndarray, mode: str = "balanced") -> CacheKey:
    return make_key(chat(q), "t", vec, None, mode)


@pytest.fixture(scope="module")
def verifier() -> PairVerifier:
    return PairVerifier.load()


def test_pair_ids_cut_each_side_and_mark_segments(verifier: PairVerifier) -> None:
    ids, types = pair_ids(verifier.model.tokenizer, "word " * 500, "short question?")
    assert len(ids) == len(types) <= 2 * MAX_SIDE_TOKENS + 3
    assert types[0] == 0 and types[-1] == 1 and ids.count(ids[-1]) == 2  # two [SEP]
    for a, b in (("", ""), ("😀", "?"), (b"\xff".decode("utf-8", "surrogateescape"), "x")):
        assert 0.0 <= verifier.score(a, b) <= 1.0


def test_artifact_modes(verifier: PairVerifier) -> None:
    assert set(verifier.modes) == {"strict", "balanced"} and "off" in MODES
    b, s = verifier.modes["balanced"], verifier.modes["strict"]
    assert 0.0 < b.cosine_floor <= 1.0 and 0.0 <= b.threshold < 1.0
    assert (s.cosine_floor, s.threshold) >= (b.cosine_floor, b.threshold)  # stricter
    held = verifier.meta["test"]["balanced"]
    assert held["non_duplicates"] > 0 and held["recall"] is not None
    assert verifier.floor("off") > 1.0


def test_verifier_tells_paraphrase_from_look_alike(verifier: PairVerifier) -> None:
    para = verifier.score("How can I learn Python fast?", "How do I learn Python quickly?")
    other = verifier.score("Why should I learn Python?", "How do I learn Python quickly?")
    assert para > other


def test_mode_off_serves_exact_hits_only(verifier: PairVerifier) -> None:
    cache = SemanticCache(MemoryStore(), verifier=verifier)
    v = unit(1)
    cache.put(key("What is the capital of France?", v), {"a": 1}, "m", now=T0)
    q = key("What's the capital of France?", at_cosine(v, 0.99), mode="off")
    found = cache.lookup_detail(q, now=T0)
    assert found.hit is None and found.reason == "off"
    exact = cache.lookup_detail(key("What is the capital of France?", v, "off"), now=T0)
    assert exact.hit is not None and exact.hit.kind == "exact"


def test_hits_and_misses_record_similarity_and_score(verifier: PairVerifier) -> None:
    cache = SemanticCache(MemoryStore(), verifier=verifier)
    v = unit(2)
    cache.put(key("What is the capital of France?", v), {"a": "Paris"}, "m", now=T0)
    rule = verifier.modes["balanced"]
    cos = min(0.999, rule.cosine_floor + 0.02)
    same = cache.lookup_detail(key("What's the capital of France?", at_cosine(v, cos)), now=T0)
    assert same.row()["similarity"] == pytest.approx(cos, abs=1e-3)
    assert same.row()["mode"] == "balanced"
    if rule.threshold > 0:  # the verifier decides: its score is recorded, hit or miss
        assert same.verifier_score is not None and same.reason in ("verified", "rejected")
        assert (same.hit is not None) == (same.reason == "verified")
    else:  # validation chose cosine alone for this mode
        assert same.hit is not None and same.reason == "cosine"
    low = cache.lookup_detail(key("Best pizza in Naples?", at_cosine(v, 0.3)), now=T0)
    assert low.hit is None and low.reason == "below_floor" and low.verifier_score is None


def test_verifier_rejects_a_different_question_above_the_floor(verifier: PairVerifier) -> None:
    """The mechanism, whatever the shipped modes chose: a mode that asks the verifier."""
    rule = ModeRule(cosine_floor=0.8, threshold=0.5)
    ver = PairVerifier(verifier.model, {"balanced": rule}, verifier.meta)
    cache = SemanticCache(MemoryStore(), verifier=ver)
    v = unit(6)
    cache.put(key("How do I bake sourdough bread at home?", v), {"a": 1}, "m", now=T0)
    q = key("What is the tallest mountain in Africa?", at_cosine(v, 0.85))
    found = cache.lookup_detail(q, now=T0)
    assert found.hit is None and found.reason == "rejected"
    assert found.verifier_score is not None and found.verifier_score < 0.5
    same = cache.lookup_detail(
        key("How do I bake sourdough bread at home", at_cosine(v, 0.99)), now=T0
    )
    assert same.verifier_score is not None and same.verifier_score > found.verifier_score


def test_without_a_verifier_the_threshold_rules() -> None:
    cache = SemanticCache(MemoryStore(), threshold=0.9)
    v = unit(3)
    cache.put(key("a question", v), {"a": 1}, "m", now=T0)
    assert cache.lookup(key("other words", at_cosine(v, 0.95)), now=T0) is not None
    assert cache.lookup(key("other words", at_cosine(v, 0.85)), now=T0) is None
    assert cache.lookup(key("other words", at_cosine(v, 0.95), "off"), now=T0) is None


class _Saved(list):
    """A `routing.cache.Persistence` that keeps what it is given, to save it by hand."""

    def save(self, entry: Entry) -> None:
        self.append(entry)

    def delete_team(self, team: str) -> None:
        self[:] = [e for e in self if e.team != team]


def test_question_survives_sql_persistence(tmp_path: Path, verifier: PairVerifier) -> None:
    from store.schema import Base, CacheEntry

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'c.db'}")
    Base.metadata.create_all(engine, tables=[CacheEntry.__table__])
    saved = _Saved()
    cache = SemanticCache(MemoryStore(), verifier=verifier, persist=saved)
    v = unit(4)
    cache.put(key("What is the capital of France?", v), {"a": "Paris"}, "m", now=T0)
    save_entry(engine, saved[0])
    fresh = SemanticCache(MemoryStore(), verifier=verifier)
    assert load_from_sql(engine, fresh, now=T0) == 1
    e = fresh.store.fetch("t", entry_id("t", exact_key(chat("What is the capital of France?"))), T0)
    assert (
        e is not None and e.query == "What is the capital of France?"
    )  # the question came back from SQL
    exact = fresh.lookup(key("What is the capital of France?", v), now=T0)
    assert exact is not None and exact.response == {"a": "Paris"}  # no internal field leaks


def test_question_survives_redis(verifier: PairVerifier) -> None:
    import uuid

    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=0.5).ping()
    except Exception:
        pytest.skip("Redis is not reachable")
    prefix = f"gg-test-{uuid.uuid4().hex[:8]}"
    store = RedisStore(REDIS_URL, prefix=prefix)
    try:
        cache = SemanticCache(store, verifier=verifier)
        v = unit(5)
        cache.put(key("What is the capital of France?", v), {"a": "Paris"}, "m", now=T0)
        other = RedisStore(REDIS_URL, prefix=prefix)
        eid = entry_id("t", exact_key(chat("What is the capital of France?")))
        e = other.fetch("t", eid, T0)
        assert e is not None and e.query == "What is the capital of France?"
        other.close()
    finally:
        cache.invalidate("t")
        store.close()


def test_key_carries_last_turn_and_mode() -> None:
    k = make_key(chat("hello there"), "t", None, None, "strict")
    assert (
        k.text == "hello there" and k.mode == "strict" and k.exact == exact_key(chat("hello there"))
    )
