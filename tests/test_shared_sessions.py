"""UI sessions and sign-in throttling through real Redis: two stores (two replicas) see the
same sessions and the same failure counts."""

from __future__ import annotations

import os
import uuid

import pytest
import redis

from gateway.shared_sessions import RedisSessionStore
from gateway.shared_state import RedisLink

REDIS = os.environ.get("GREENGATE_TEST_REDIS", "redis://127.0.0.1:6379/0")


@pytest.fixture
def prefix() -> str:
    p = f"ggtest:{uuid.uuid4().hex[:10]}:"
    yield p
    r = redis.Redis.from_url(REDIS)
    keys = list(r.scan_iter(p + "*"))
    if keys:
        r.delete(*keys)


def _store(prefix: str) -> RedisSessionStore:
    return RedisSessionStore(RedisLink(REDIS), prefix, REDIS)


def test_a_session_made_on_one_replica_works_on_another(prefix: str) -> None:
    a, b = _store(prefix), _store(prefix)
    s = a.create("hash-1")
    got = b.get(s.id)
    assert got is not None and got.key_hash == "hash-1" and got.csrf == s.csrf
    b.delete(s.id)  # sign out on b: gone on a too
    assert a.get(s.id) is None
    assert a.get("no-such-session") is None


def test_sessions_per_key_are_bounded_across_replicas(prefix: str) -> None:
    a, b = _store(prefix), _store(prefix)
    ids = [(a if i % 2 else b).create("hash-2").id for i in range(25)]
    live = [sid for sid in ids if a.get(sid) is not None]
    assert len(live) == 20 and live == ids[-20:]  # the oldest went


def test_idle_sessions_expire(prefix: str) -> None:
    a = _store(prefix)
    a.idle_s = 0.0
    s = a.create("hash-3")
    assert a.get(s.id) is None


def test_sign_in_failures_count_across_replicas(prefix: str) -> None:
    a, b = _store(prefix), _store(prefix)
    for i in range(10):
        assert (a if i % 2 else b).throttle.retry_after("10.0.0.1") == 0
        (a if i % 2 else b).throttle.failed("10.0.0.1")
    assert a.throttle.retry_after("10.0.0.1") > 0
    assert b.throttle.retry_after("10.0.0.1") > 0  # b saw only 5 itself
    assert b.throttle.retry_after("10.0.0.2") == 0
