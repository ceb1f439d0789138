"""Requests-per-minute and tokens-per-minute limits per key and per team.

Counted in a sliding window approximated by two fixed one-minute windows (the previous one
weighted by how much of it still overlaps the last 60 s), which is what Redis can do in one
round trip with INCRBYFLOAT and MGET; in memory when no Redis is configured, in Redis (shared
by replicas) when it is. A request is counted when it is admitted; its tokens when it finishes
(the usage is only known then), so concurrent requests may overshoot a token limit by at most
their own tokens, as with budgets. With Redis away the check lets requests through (logged):
a limiter outage must not refuse everyone.

Answers carry OpenAI's headers: x-ratelimit-limit-requests, -remaining-requests,
-reset-requests and the same for tokens; a refusal is a 429 with retry-after."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger("greengate.ratelimit")
WINDOW_S = 60.0


@dataclass(frozen=True, slots=True)
class Limit:
    """One subject's limits (None: unlimited)."""

    scope: str  # "key" | "team"
    subject: str
    rpm: int | None
    tpm: int | None


@dataclass(slots=True)
class Usage:
    """What one subject used in the sliding minute, and when that eases."""

    limit: Limit
    requests: float
    tokens: float
    elapsed_s: float  # into the current fixed window
    windows: tuple[float, float, float, float]  # requests prev, cur; tokens prev, cur


def _duration(seconds: float) -> str:
    """OpenAI's reset format: '1s', '6m0s', '0.5s'."""
    if seconds < 60:
        return f"{max(seconds, 0.001):.3g}s"
    m, s = divmod(int(math.ceil(seconds)), 60)
    return f"{m}m{s}s"


class Refused(Exception):
    def __init__(self, message: str, retry_after_s: float, headers: dict[str, str],
                 param: str) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.headers = headers
        self.param = param


class WindowStore(Protocol):
    def read(self, keys: list[str]) -> list[float]: ...

    def add(self, key: str, amount: float, ttl_s: int) -> None: ...


class MemoryWindows:
    """Counters of one process; stale windows are dropped as time moves on."""

    def __init__(self) -> None:
        self._values: dict[str, tuple[float, float]] = {}  # key -> (value, expires at)

    def read(self, keys: list[str]) -> list[float]:
        now = time.monotonic()
        out = []
        for k in keys:
            v = self._values.get(k)
            out.append(v[0] if v is not None and v[1] > now else 0.0)
        return out

    def add(self, key: str, amount: float, ttl_s: int) -> None:
        now = time.monotonic()
        if len(self._values) > 100_000:
            self._values = {k: v for k, v in self._values.items() if v[1] > now}
        v = self._values.get(key)
        base = v[0] if v is not None and v[1] > now else 0.0
        self._values[key] = (base + amount, now + ttl_s)


class RedisWindows:
    """Counters shared by replicas (INCRBYFLOAT is atomic; keys expire on their own)."""

    def __init__(self, url: str, prefix: str = "gg:rl:", client: Any = None) -> None:
        import redis

        self.client = client or redis.Redis.from_url(url, socket_timeout=0.25,
                                                     socket_connect_timeout=0.25)
        self.prefix = prefix

    def read(self, keys: list[str]) -> list[float]:
        values = self.client.mget([self.prefix + k for k in keys])
        return [float(v) if v is not None else 0.0 for v in values]

    def add(self, key: str, amount: float, ttl_s: int) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.incrbyfloat(self.prefix + key, amount)
        pipe.expire(self.prefix + key, ttl_s)
        pipe.execute()


class RateLimiter:
    def __init__(self, store: WindowStore, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock

    @staticmethod
    def _keys(limit: Limit, kind: str, index: int) -> list[str]:
        base = f"{limit.scope}:{limit.subject}:{kind}"
        return [f"{base}:{index - 1}", f"{base}:{index}"]

    def _usage(self, limits: list[Limit], now: float) -> list[Usage]:
        index = int(now // WINDOW_S)
        elapsed = now - index * WINDOW_S
        weight = 1.0 - elapsed / WINDOW_S
        keys = [k for lim in limits for kind in ("req", "tok")
                for k in self._keys(lim, kind, index)]
        values = self.store.read(keys)
        out = []
        for i, lim in enumerate(limits):
            rp, rc, tp, tc = values[4 * i:4 * i + 4]
            out.append(Usage(lim, rp * weight + rc, tp * weight + tc, elapsed, (rp, rc, tp, tc)))
        return out

    @staticmethod
    def _wait(used: float, cap: float, elapsed: float, prev: float, cur: float) -> float:
        """Seconds until `used` falls to `cap` as the windows slide."""
        if cur <= cap and prev > 0:  # the previous window's share fades out in time
            return min(WINDOW_S - elapsed, max(0.0, (used - cap) / prev * WINDOW_S))
        # this window alone is over: wait for it to become the previous one and fade
        return WINDOW_S - elapsed + WINDOW_S * (1.0 - cap / cur if cur > 0 else 0.0)

    def admit(self, limits: list[Limit]) -> dict[str, str]:
        """Count one request against every subject, or raise Refused (nothing counted).
        Returns the x-ratelimit-* headers of the tightest subject."""
        limits = [lim for lim in limits if lim.rpm is not None or lim.tpm is not None]
        if not limits:
            return {}
        now = self.clock()
        try:
            usage = self._usage(limits, now)
        except Exception:
            log.exception("rate-limit counters unavailable; admitting without the check")
            return {}
        index = int(now // WINDOW_S)
        for u in usage:
            lim = u.limit
            if lim.rpm is not None and u.requests + 1 > lim.rpm:
                wait = self._wait(u.requests + 1, lim.rpm, u.elapsed_s, u.windows[0],
                                  u.windows[1] + 1)
                raise Refused(f"Rate limit reached for {lim.scope} {lim.subject}: "
                              f"{lim.rpm} requests per minute.", wait,
                              self._headers(u, wait, 0), "rpm_limit")
            if lim.tpm is not None and u.tokens >= lim.tpm:
                wait = self._wait(u.tokens, lim.tpm - 1, u.elapsed_s, u.windows[2],
                                  u.windows[3])
                raise Refused(f"Rate limit reached for {lim.scope} {lim.subject}: "
                              f"{lim.tpm} tokens per minute.", wait,
                              self._headers(u, wait, 1), "tpm_limit")
        try:
            for lim in limits:
                self.store.add(self._keys(lim, "req", index)[1], 1.0, int(2 * WINDOW_S) + 1)
        except Exception:
            log.exception("rate-limit counters unavailable; request not counted")
        tightest = min(usage, key=lambda u: (u.limit.rpm - u.requests) if u.limit.rpm
                       is not None else math.inf)
        tightest.requests += 1
        return self._headers(tightest, None, None)

    def charge(self, limits: list[Limit], tokens: int) -> None:
        """A finished request's tokens, against the subjects with a token limit."""
        if tokens <= 0:
            return
        index = int(self.clock() // WINDOW_S)
        for lim in limits:
            if lim.tpm is None:
                continue
            try:
                self.store.add(self._keys(lim, "tok", index)[1], float(tokens),
                               int(2 * WINDOW_S) + 1)
            except Exception:
                log.exception("rate-limit counters unavailable; tokens not counted")

    @staticmethod
    def _headers(u: Usage, wait: float | None, refused: int | None) -> dict[str, str]:
        h: dict[str, str] = {}
        reset = _duration(wait if wait is not None else WINDOW_S - u.elapsed_s)
        if u.limit.rpm is not None:
            h["x-ratelimit-limit-requests"] = str(u.limit.rpm)
            h["x-ratelimit-remaining-requests"] = str(max(0, int(u.limit.rpm - u.requests)))
            h["x-ratelimit-reset-requests"] = reset if refused != 1 else _duration(
                WINDOW_S - u.elapsed_s)
        if u.limit.tpm is not None:
            h["x-ratelimit-limit-tokens"] = str(u.limit.tpm)
            h["x-ratelimit-remaining-tokens"] = str(max(0, int(u.limit.tpm - u.tokens)))
            h["x-ratelimit-reset-tokens"] = reset if refused != 0 else _duration(
                WINDOW_S - u.elapsed_s)
        if wait is not None:
            h["retry-after"] = str(max(1, math.ceil(wait)))
        return h
