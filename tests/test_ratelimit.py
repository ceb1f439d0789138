"""The sliding-minute limiter: requests and tokens, per subject, in memory and in Redis."""

from __future__ import annotations

import uuid

import pytest

from gateway.ratelimit import Limit, MemoryWindows, RateLimiter, RedisWindows, Refused


class Clock:
    def __init__(self, t: float = 6000.0) -> None:  # the start of a window
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    if request.param == "memory":
        return MemoryWindows()
    s = RedisWindows("redis://127.0.0.1:6379/0", prefix=f"gg:test:{uuid.uuid4().hex}:")
    s.client.ping()
    return s


def test_requests_per_minute(store) -> None:  # type: ignore[no-untyped-def]
    clock = Clock()
    rl = RateLimiter(store, clock)
    lim = [Limit("key", "1", rpm=3, tpm=None)]
    remaining = [rl.admit(lim)["x-ratelimit-remaining-requests"] for _ in range(3)]
    assert remaining == ["2", "1", "0"]
    with pytest.raises(Refused) as e:
        rl.admit(lim)
    assert e.value.param == "rpm_limit"
    assert e.value.headers["x-ratelimit-limit-requests"] == "3"
    assert int(e.value.headers["retry-after"]) >= 1
    clock.t += 90  # the next window, half-way: half of the full one still counts (1.5)
    rl.admit(lim)
    with pytest.raises(Refused):
        rl.admit(lim)
    clock.t += 60  # the full window has slid out (and half of the next counts: 0.5)
    assert rl.admit(lim)["x-ratelimit-limit-requests"] == "3"


def test_tokens_per_minute_and_subjects_apart(store) -> None:  # type: ignore[no-untyped-def]
    clock = Clock()
    rl = RateLimiter(store, clock)
    key = Limit("key", "7", rpm=None, tpm=100)
    team = Limit("team", "t", rpm=None, tpm=1000)
    rl.admit([key, team])
    rl.charge([key, team], 100)
    with pytest.raises(Refused) as e:
        rl.admit([key, team])
    assert e.value.param == "tpm_limit" and "key 7" in str(e.value)
    other = Limit("key", "8", rpm=None, tpm=100)
    assert rl.admit([other, team])["x-ratelimit-remaining-tokens"] == "100"
    clock.t += 121
    rl.admit([key, team])


def test_no_limits_no_headers() -> None:
    rl = RateLimiter(MemoryWindows())
    assert rl.admit([Limit("key", "1", None, None)]) == {}


def test_redis_away_admits() -> None:
    rl = RateLimiter(RedisWindows("redis://127.0.0.1:1/0"))
    assert rl.admit([Limit("key", "1", rpm=1, tpm=None)]) == {}
