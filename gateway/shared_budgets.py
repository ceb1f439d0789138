"""Budget counters shared by replicas through Redis: exact admission, and no charge lost to an
outage.

Why reservations: a request is charged when it finishes, so with check-then-charge every
request admitted while others are still running sees the same "spent" and N replicas x C
concurrent requests overshoot a cap by up to N x C requests (340 admitted for a budget worth
20, in the issue). Here admission is one Lua script per rule, atomic in Redis: it admits only
when `spent + reserved + estimate <= limit`, and reserves the estimate (the mean charge of the
rule's recent requests, kept in Redis). Finishing is a second script: the real amount is
charged and the reservation released. A reservation whose replica died expires after
`hold_s` (the longest a request can run).

The bound: admitted spend exceeds the limit by at most the sum, over the requests in flight
at the moment the cap is reached, of (actual charge - estimate); with equal-cost requests that
is 0. A rule with no charge history yet (no estimate) admits like check-then-charge until its
first charge lands: then the overshoot is at most (requests in flight) x (one request's cost).

Redis away (`redis_outage`):
- fail_open: admit against this replica's last view (the spent value the last admission saw
  plus what it charged since), and keep every charge in a local ledger;
- fail_closed: requests under a budget are refused (503) until Redis answers.
On recovery the ledger is added to the Redis counters (INCRBYFLOAT) and pending releases are
run, so nothing served during the outage goes uncharged. The ledger lives in memory: a replica
killed during an outage loses its ledger (its decision rows still hold the amounts; the
counter is re-seeded from the decision log only when it expired)."""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from gateway.errors import GatewayError
from gateway.shared_state import RedisDown, RedisLink
from telemetry import BudgetRule, Budgets, CounterStore, Exceeded, period_bounds

log = logging.getLogger("greengate.budgets")
STATS_WINDOW = 1000  # charges the estimate averages over (halved beyond it)

_ADMIT = """
local now = tonumber(ARGV[3])
local old = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
for _, id in ipairs(old) do
  local a = redis.call('HGET', KEYS[4], id)
  if a then
    redis.call('INCRBYFLOAT', KEYS[2], -tonumber(a))
    redis.call('HDEL', KEYS[4], id)
  end
  redis.call('ZREM', KEYS[3], id)
end
local spent = tonumber(redis.call('GET', KEYS[1]) or '0')
local resv = tonumber(redis.call('GET', KEYS[2]) or '0')
if resv < 0 then resv = 0 end
local n = tonumber(redis.call('HGET', KEYS[5], 'n') or '0')
local est = 0
if n > 0 then est = tonumber(redis.call('HGET', KEYS[5], 'sum') or '0') / n end
local limit = tonumber(ARGV[1])
if spent >= limit or (est > 0 and spent + resv + est > limit * (1 + 1e-9)) then
  return {0, tostring(spent), tostring(resv)}
end
if est > 0 then
  redis.call('INCRBYFLOAT', KEYS[2], est)
  redis.call('HSET', KEYS[4], ARGV[2], est)
  redis.call('ZADD', KEYS[3], now + tonumber(ARGV[4]), ARGV[2])
  for i = 2, 4 do redis.call('EXPIRE', KEYS[i], ARGV[5]) end
end
return {1, tostring(spent), tostring(resv)}
"""

_SETTLE = """
local a = redis.call('HGET', KEYS[4], ARGV[2])
if a then
  redis.call('INCRBYFLOAT', KEYS[2], -tonumber(a))
  redis.call('HDEL', KEYS[4], ARGV[2])
  redis.call('ZREM', KEYS[3], ARGV[2])
end
local amt = tonumber(ARGV[1])
if amt > 0 then
  local v = redis.call('INCRBYFLOAT', KEYS[1], amt)
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  if ARGV[4] == '1' then
    local n = redis.call('HINCRBY', KEYS[5], 'n', 1)
    local s = redis.call('HINCRBYFLOAT', KEYS[5], 'sum', amt)
    if n > tonumber(ARGV[5]) then
      redis.call('HSET', KEYS[5], 'n', math.floor(n / 2), 'sum', tonumber(s) / 2)
    end
  end
  return v
end
return redis.call('GET', KEYS[1]) or '0'
"""


class SharedCounters(CounterStore):
    """The plain counter operations (seed, get, add) over the link, for Budgets' callers."""

    def __init__(self, link: RedisLink) -> None:
        self.link = link

    def get(self, key: str) -> float | None:
        value = self.link.call(lambda r: r.get(key))
        return None if value is None else float(value)

    def seed(self, key: str, value: float, ttl_s: int) -> None:
        self.link.call(lambda r: r.set(key, value, ex=ttl_s, nx=True))

    def add(self, key: str, amount: float, ttl_s: int) -> float:
        def run(r):  # type: ignore[no-untyped-def]
            pipe = r.pipeline()
            pipe.incrbyfloat(key, amount)
            pipe.expire(key, ttl_s)
            return float(pipe.execute()[0])

        return self.link.call(run)


@dataclass
class _Pending:
    """What this replica owes Redis after an outage."""

    charges: dict[str, tuple[float, int]]  # counter key -> (amount, ttl)
    releases: list[tuple[list[str], str]]  # (rule keys, request id)


class SharedBudgets(Budgets):
    """Budgets whose admission and charges are atomic in Redis (see the module docstring)."""

    def __init__(self, link: RedisLink, prefix: str,
                 outage: Literal["fail_open", "fail_closed"] = "fail_open",
                 hold_s: float = 330.0) -> None:
        super().__init__(SharedCounters(link))
        self.link = link
        self.prefix = prefix
        self.outage = outage
        self.hold_s = hold_s
        self._admit = link.client.register_script(_ADMIT)
        self._settle = link.client.register_script(_SETTLE)
        self._seen: dict[str, float] = {}  # counter key -> spent as last seen in Redis
        self._reserved: dict[str, list[BudgetRule]] = {}  # request id -> rules it reserved on
        self._lock = threading.Lock()
        self._pending = _Pending({}, [])
        self.outage_admitted = 0
        self.outage_refused = 0
        self.reconciled = 0.0
        link.on_recover(self.reconcile)

    # ---- keys --------------------------------------------------------------------------
    def _counter(self, rule: BudgetRule, start: datetime) -> str:
        return (f"{self.prefix}budget:{rule.scope}:{rule.subject}:{rule.metric}:"
                f"{rule.period}:{start:%Y%m%d}")

    def _keys(self, rule: BudgetRule, start: datetime) -> list[str]:
        c = self._counter(rule, start)
        stats = f"{self.prefix}budget:{rule.scope}:{rule.subject}:{rule.metric}:stats"
        return [c, c + ":resv", c + ":resvz", c + ":resvh", stats]

    # ---- the request path --------------------------------------------------------------
    def check(self, team: str | None, key_id: int | None, now: datetime | None = None,
              rid: str | None = None) -> Exceeded | None:
        """Admit (reserving on each applicable rule) or say which rule is exhausted."""
        now = now or datetime.now(UTC)
        rules = [r for r in self.rules if self._applies(r, team, key_id)]
        if not rules:
            return None
        reserved: list[BudgetRule] = []
        for rule in rules:
            start, reset = period_bounds(rule.period, now)
            keys = self._keys(rule, start)
            try:
                ok, spent, _ = self.link.call(lambda r, k=keys, ru=rule, re=reset: self._admit(
                    keys=k, args=[ru.limit, rid or "", int(time.time() * 1000),
                                  int(self.hold_s * 1000), self._ttl(re, now)], client=r))
            except RedisDown:
                self._release_local(reserved, rid, now)
                return self._outage_check(rules, now)
            spent_f = float(spent)
            self._seen[keys[0]] = spent_f
            if not int(ok):
                self._release_local(reserved, rid, now)
                return Exceeded(rule, spent_f, reset)
            reserved.append(rule)
        if rid:
            self._reserved[rid] = reserved
        return None

    def _release_local(self, rules: list[BudgetRule], rid: str | None, now: datetime) -> None:
        """A later rule refused: give back the earlier reservations of this request."""
        for rule in rules:
            self._settle_rule(rule, rid or "", 0.0, now, count=False)

    def _outage_check(self, rules: list[BudgetRule], now: datetime) -> Exceeded | None:
        if self.outage == "fail_closed":
            self.outage_refused += 1
            raise GatewayError(503, "Budget counters are unavailable (Redis does not answer); "
                               "retry shortly.", code="budget_counters_unavailable",
                               headers={"retry-after": "2"})
        for rule in rules:
            start, reset = period_bounds(rule.period, now)
            spent = self.local_spent(rule, now)
            if spent >= rule.limit:
                return Exceeded(rule, spent, reset)
        self.outage_admitted += 1
        return None

    def charge(self, team: str | None, key_id: int | None, cost_usd: float | None,
               energy_j: float | None, now: datetime | None = None,
               rid: str | None = None) -> None:
        """Charge what the request cost and release its reservations (always call it)."""
        now = now or datetime.now(UTC)
        held = self._reserved.pop(rid, []) if rid else []
        held_ids = {r.id for r in held}
        for rule in self.rules:
            if not self._applies(rule, team, key_id):
                continue
            amount = cost_usd if rule.metric == "usd" else (
                None if energy_j is None else energy_j / 3600.0)
            if not amount and rule.id not in held_ids:
                continue
            self._settle_rule(rule, rid or "", float(amount or 0.0), now, count=True)

    def _settle_rule(self, rule: BudgetRule, rid: str, amount: float, now: datetime,
                     count: bool) -> None:
        start, reset = period_bounds(rule.period, now)
        keys = self._keys(rule, start)
        ttl = self._ttl(reset, now)
        try:
            value = self.link.call(lambda r: self._settle(
                keys=keys, args=[amount, rid, ttl, "1" if count else "0", STATS_WINDOW],
                client=r))
            self._seen[keys[0]] = float(value)
        except RedisDown:
            with self._lock:
                if amount:
                    old, _ = self._pending.charges.get(keys[0], (0.0, ttl))
                    self._pending.charges[keys[0]] = (old + amount, ttl)
                if rid:
                    self._pending.releases.append((keys, rid))

    # ---- views -------------------------------------------------------------------------
    def local_spent(self, rule: BudgetRule, now: datetime | None = None) -> float:
        """This replica's view: the last value Redis gave plus what it owes Redis."""
        start, _ = period_bounds(rule.period, now or datetime.now(UTC))
        key = self._counter(rule, start)
        with self._lock:
            owed = self._pending.charges.get(key, (0.0, 0))[0]
        return self._seen.get(key, 0.0) + owed

    def spent(self, rule: BudgetRule, now: datetime | None = None) -> float:
        """Spent so far; never raises (Redis away: the local view)."""
        now = now or datetime.now(UTC)
        start, _ = period_bounds(rule.period, now)
        key = self._counter(rule, start)
        try:
            value = self.link.call(lambda r: r.get(key))
        except RedisDown:
            return self.local_spent(rule, now)
        spent = 0.0 if value is None else float(value)
        self._seen[key] = spent
        with self._lock:
            return spent + self._pending.charges.get(key, (0.0, 0))[0]

    def seed(self, rule: BudgetRule, spent: float, now: datetime | None = None) -> None:
        now = now or datetime.now(UTC)
        start, reset = period_bounds(rule.period, now)
        key = self._counter(rule, start)
        try:
            self.link.call(lambda r: r.set(key, spent, ex=self._ttl(reset, now), nx=True))
        except RedisDown:
            self._seen.setdefault(key, spent)

    def seed_estimate(self, rule: BudgetRule, mean: float | None, n: int) -> None:
        """Start the per-request estimate from the decision log (when Redis has none)."""
        if not mean or n <= 0:
            return
        stats = self._keys(rule, datetime.now(UTC))[4]
        n = min(n, STATS_WINDOW)

        def run(r):  # type: ignore[no-untyped-def]
            if r.hsetnx(stats, "n", n):
                r.hset(stats, "sum", mean * n)

        with contextlib.suppress(RedisDown):
            self.link.call(run)

    @property
    def owed(self) -> float:
        with self._lock:
            return sum(a for a, _ in self._pending.charges.values())

    # ---- recovery ----------------------------------------------------------------------
    def reconcile(self) -> None:
        """Redis answers again: add what was charged during the outage, run the releases."""
        with self._lock:
            charges, self._pending.charges = self._pending.charges, {}
            releases, self._pending.releases = self._pending.releases, []
        done = 0.0
        failed: dict[str, tuple[float, int]] = {}
        for key, (amount, ttl) in charges.items():
            try:
                self.link.call(lambda r, k=key, a=amount, t=ttl: (
                    r.incrbyfloat(k, a), r.expire(k, t)))
                done += amount
            except RedisDown:
                failed[key] = (amount, ttl)
        left = collections.deque(releases)
        while left:
            keys, rid = left[0]
            try:
                self.link.call(lambda r, k=keys, i=rid: self._settle(
                    keys=k, args=[0, i, 60, "0", STATS_WINDOW], client=r))
            except RedisDown:
                break
            left.popleft()
        with self._lock:
            for key, (amount, ttl) in failed.items():
                old, _ = self._pending.charges.get(key, (0.0, ttl))
                self._pending.charges[key] = (old + amount, ttl)
            self._pending.releases[:0] = list(left)
        self.reconciled += done
        if done:
            log.info("budgets: %.6g charged during the redis outage added to the counters", done)


__all__ = ["SharedBudgets", "SharedCounters"]
