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
from routing.cache.pair_features import LEXICAL, lexical, pair_matrix
from routing.cache.verifier import MODES, ModeRule, PairVerifier

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


def test_bad_input_gets_a_score(verifier: PairVerifier) -> None:
    v = unit(7)
    odd = b"\xff".decode("utf-8", "surrogateescape")
    for a, b in (("", ""), ("😀", "?"), (odd, "x"), ("word " * 200_000, "short question?")):
        s = verifier.score(a, b, 0.95, v, at_cosine(v, 0.95))
        assert 0.0 <= s <= 1.0
    assert verifier.score_many([], [], np.zeros((0, 384)), np.zeros((0, 384))).shape == (0,)


def test_pair_features_are_symmetric_and_see_substitutions() -> None:
    a, b = "What is the capital of France?", "What's the capital city of France?"
    assert lexical(a, b) == lexical(b, a) and len(lexical(a, b)) == len(LEXICAL)
    swap = dict(
        zip(
            LEXICAL,
            lexical("Are cats afraid of tigers?", "Are tigers afraid of cats?"),
            strict=True,
        )
    )
    assert swap["shared_order_differs"] == 1.0 and swap["content_words_one_side"] == 0.0
    names = dict(
        zip(LEXICAL, lexical("Best hotels in Bulgaria?", "Best hotels in Slovenia?"), strict=True)
    )
    assert names["names_substitution"] == 1.0 and names["content_substitution"] == 1.0
    v, w = unit(8), unit(9)
    x = pair_matrix([(a, b), (b, a)], np.array([0.5, 0.5]), np.stack([v, w]), np.stack([w, v]))
    assert x.shape == (2, 1 + len(LEXICAL) + 2 * 384) and np.allclose(x[0], x[1])


def test_verifier_score_does_not_depend_on_order(verifier: PairVerifier) -> None:
    v = unit(10)
    w = at_cosine(v, 0.93)
    a, b = "How can I learn Python fast?", "How do I learn Python quickly?"
    assert verifier.score(a, b, 0.93, v, w) == pytest.approx(verifier.score(b, a, 0.93, w, v))


def test_artifact_modes(verifier: PairVerifier) -> None:
    assert set(verifier.modes) == {"strict", "balanced"} and "off" in MODES
    b, s = verifier.modes["balanced"], verifier.modes["strict"]
    assert 0.0 < b.cosine_floor <= 1.0 and 0.0 <= b.threshold < 1.0
    assert (s.cosine_floor, s.threshold) >= (b.cosine_floor, b.threshold)  # stricter
    held = verifier.meta["test"]["balanced"]
    assert held["non_duplicates"] > 0 and held["recall"] is not None
    assert verifier.floor("off") > 1.0


@pytest.fixture(scope="module")
def embed():
    from routing.embedder import Embedder

    emb = Embedder().load()
    yield lambda *texts: list(emb.encode(list(texts)))
    emb.close()


EP = "What should new employees know going into their first day at EP Energy?"
EP_PARA = "What should a new employee know before the first day at EP Energy?"
CMS = "What should new employees know going into their first day at CMS Energy?"


def test_verifier_tells_paraphrase_from_look_alike(verifier: PairVerifier, embed) -> None:
    """Real embeddings: a rewording scores above a same-shaped question about another
    company (both near the cosine floor), and "What's" reads as "What is"."""
    vq, vp, vo = embed(EP, EP_PARA, CMS)
    s_para = verifier.score(EP_PARA, EP, float(vp @ vq), vp, vq)
    s_other = verifier.score(CMS, EP, float(vo @ vq), vo, vq)
    assert s_para > s_other
    a, b = "What is the capital of France?", "What's the capital of France?"
    va, vb = embed(a, b)
    assert verifier.score(b, a, float(va @ vb), vb, va) > s_other


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


def test_verifier_rejects_a_different_question_above_the_floor(
    verifier: PairVerifier, embed
) -> None:
    """The mechanism, whatever the shipped modes chose: a mode that asks the verifier."""
    rule = ModeRule(cosine_floor=0.8, threshold=0.5)
    ver = PairVerifier(verifier.head, {"balanced": rule}, verifier.meta)
    cache = SemanticCache(MemoryStore(), verifier=ver)
    vq, vp, vo = embed(EP, EP_PARA, CMS)
    cache.put(key(EP, vq), {"a": 1}, "m", now=T0)
    found = cache.lookup_detail(key(CMS, vo), now=T0)
    assert found.similarity is not None and found.similarity >= 0.8  # a look-alike
    assert found.hit is None and found.reason == "rejected"
    assert found.verifier_score is not None and found.verifier_score < 0.5
    same = cache.lookup_detail(key(EP_PARA, vp), now=T0)
    assert same.verifier_score is not None and same.verifier_score > found.verifier_score


def test_embeddings_of_another_size_fall_back_to_cosine(verifier: PairVerifier) -> None:
    """A stand-in embedder (another dimension) never reaches the head: the legacy cosine rule
    decides, and the lookup is a hit or a miss, not an error."""
    rule = ModeRule(cosine_floor=0.8, threshold=0.5)
    ver = PairVerifier(verifier.head, {"balanced": rule}, verifier.meta)
    v = unit(11, dim=16)
    near, far = (
        ver.decide("balanced", "a b", "a b c", 0.99, v, v),
        ver.decide("balanced", "a b", "x y", 0.9, v, at_cosine(v, 0.9)),
    )
    assert (near.hit, near.reason, far.hit, far.reason) == (True, "legacy", False, "legacy")
    cache = SemanticCache(MemoryStore(), verifier=ver)
    cache.put(key("What is the capital of France?", v), {"a": 1}, "m", now=T0)
    found = cache.lookup_detail(key("What's the capital of France?", at_cosine(v, 0.99)), now=T0)
    assert found.hit is not None and found.reason == "legacy" and cache.stats()["errors"] == 0


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
