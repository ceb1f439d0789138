"""Admin-UI sessions and sign-in throttling shared by replicas through Redis, so a load
balancer needs no sticky sessions: a session made on one replica is valid on every other, a
sign-out anywhere signs out everywhere, and a password guesser cannot multiply its tries by
the number of replicas.

Same interface as gateway.sessions.SessionStore (create, get, delete, len, throttle). A session
is a Redis hash `{prefix}ui:s:{id}` whose TTL is the idle timeout (renewed by each use, never
past the absolute limit); `{prefix}ui:k:{key hash}` orders one key's sessions by age so the
oldest goes beyond MAX_PER_KEY. Wall-clock time (not monotonic): replicas compare it.

The throttle is the `limits` library's moving window (10 failures per 5 minutes per client)
on the same Redis. With Redis away, sign-ins fall back to this replica's own throttle and
new sessions are refused (503), rather than signed in unchecked."""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from typing import Any

from gateway.errors import GatewayError
from gateway.sessions import ABSOLUTE_S, IDLE_S, MAX_PER_KEY, LoginThrottle, UiSession
from gateway.shared_state import RedisDown, RedisLink

log = logging.getLogger("greengate.sessions")


class SharedThrottle:
    """LoginThrottle's interface over `limits` with Redis storage."""

    def __init__(self, redis_url: str, prefix: str, max_failures: int = 10,
                 window_s: float = 300.0) -> None:
        from limits import RateLimitItemPerSecond
        from limits.storage import storage_from_string
        from limits.strategies import MovingWindowRateLimiter

        self.max_failures = max_failures
        self.window_s = window_s
        self._item = RateLimitItemPerSecond(max_failures, int(window_s))
        self._limiter = MovingWindowRateLimiter(storage_from_string(
            redis_url, socket_timeout=0.25, socket_connect_timeout=0.25))
        self._ns = f"{prefix}ui-login"
        self._local = LoginThrottle(max_failures, window_s)  # while Redis is away

    def retry_after(self, client: str) -> float:
        try:
            if self._limiter.test(self._item, self._ns, client):
                return self._local.retry_after(client)
            stats = self._limiter.get_window_stats(self._item, self._ns, client)
            return max(1.0, stats.reset_time - time.time())
        except Exception as e:  # limits surfaces the driver's errors as they are
            log.warning("sign-in throttle: redis unavailable (%s); local counts only",
                        type(e).__name__)
            return self._local.retry_after(client)

    def failed(self, client: str) -> None:
        self._local.failed(client)
        try:
            self._limiter.hit(self._item, self._ns, client)
        except Exception as e:
            log.warning("sign-in throttle: redis unavailable (%s)", type(e).__name__)


class RedisSessionStore:
    """Sessions in Redis (see the module docstring)."""

    def __init__(self, link: RedisLink, prefix: str, redis_url: str,
                 idle_s: float = IDLE_S, absolute_s: float = ABSOLUTE_S) -> None:
        self.link = link
        self.prefix = prefix
        self.idle_s = idle_s
        self.absolute_s = absolute_s
        self.throttle: Any = SharedThrottle(redis_url, prefix)

    def _skey(self, sid: str) -> str:
        return f"{self.prefix}ui:s:{sid}"

    def _kkey(self, key_hash: str) -> str:
        return f"{self.prefix}ui:k:{key_hash}"

    def create(self, key_hash: str) -> UiSession:
        now = time.time()
        s = UiSession(secrets.token_urlsafe(32), key_hash, secrets.token_urlsafe(32), now, now)

        def run(r: Any) -> None:
            kk = self._kkey(key_hash)
            r.zremrangebyscore(kk, "-inf", now - self.absolute_s)
            while r.zcard(kk) >= MAX_PER_KEY:
                for old, _ in r.zpopmin(kk):
                    r.delete(self._skey(old.decode() if isinstance(old, bytes) else old))
            pipe = r.pipeline()
            pipe.hset(self._skey(s.id), mapping={"key_hash": key_hash, "csrf": s.csrf,
                                                 "created": now, "last_seen": now})
            pipe.expire(self._skey(s.id), int(self.idle_s) + 1)
            pipe.zadd(kk, {s.id: now})
            pipe.expire(kk, int(self.absolute_s) + 1)
            pipe.execute()

        try:
            self.link.call(run)
        except RedisDown:
            raise GatewayError(503, "Sign-in is unavailable (the session store does not "
                               "answer); try again shortly.", code="sessions_unavailable",
                               headers={"retry-after": "5"}) from None
        return s

    def get(self, sid: str | None) -> UiSession | None:
        """The live session with this id (its idle timer restarts), else None."""
        if not sid:
            return None
        try:
            raw = self.link.call(lambda r: r.hgetall(self._skey(sid)))
        except RedisDown:
            return None  # signed out while the store is away: a key still works
        if not raw:
            return None
        d = {(k.decode() if isinstance(k, bytes) else k): (
            v.decode() if isinstance(v, bytes) else v) for k, v in raw.items()}
        now = time.time()
        created, last = float(d["created"]), float(d["last_seen"])
        if now - last > self.idle_s or now - created > self.absolute_s:
            self.delete(sid)
            return None
        ttl = int(min(self.idle_s, self.absolute_s - (now - created))) + 1

        def touch(r: Any) -> None:
            pipe = r.pipeline()
            pipe.hset(self._skey(sid), "last_seen", now)
            pipe.expire(self._skey(sid), ttl)
            pipe.execute()

        with contextlib.suppress(RedisDown):
            self.link.call(touch)
        return UiSession(sid, d["key_hash"], d["csrf"], created, now)

    def delete(self, sid: str | None) -> None:
        if not sid:
            return
        try:
            self.link.call(lambda r: r.delete(self._skey(sid)))
        except RedisDown:
            log.warning("sign-out could not reach the session store; the session expires "
                        "by its idle timeout")

    def __len__(self) -> int:
        try:
            return sum(1 for _ in self.link.call(
                lambda r: list(r.scan_iter(f"{self.prefix}ui:s:*", count=1000))))
        except RedisDown:
            return 0


__all__ = ["RedisSessionStore", "SharedThrottle"]
