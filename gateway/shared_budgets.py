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
counter is re-seeded from the decision log only when it expired).

Cost on the request path: one Lua round trip (admission). The charge runs on one background
thread in request order (`background=True`): the reservation holds the request's share until
it lands, so exactness does not depend on when it does; `flush()` waits for it."""

from __future__ import annotations

import collections
import contextlib
import logging
import queue
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
if ARGV[2] ~= '' then
  -- once per request: a retry after a lost reply (a cut mid-call) must not charge twice
  local now = tonumber(ARGV[6])
  redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', now - 3600000)
  if redis.call('ZADD', KEYS[6], 'NX', now, ARGV[2]) == 0 then
    return redis.call('GET', KEYS[1]) or '0'
  end
  redis.call('PEXPIRE', KEYS[6], 3700000)
end
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
class _Owed:
    """One settle Redis did not confirm: replayed on recovery (idempotent per request)."""

    keys: list[str]
    rid: str
    amount: float
    ttl: int
    count: bool


class SharedBudgets(Budgets):
    """Budgets whose admission and charges are atomic in Redis (see the module docstring)."""

    def __init__(self, link: RedisLink, prefix: str,
                 outage: Literal["fail_open", "fail_closed"] = "fail_open",
                 hold_s: float = 330.0, background: bool = True) -> None:
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
        self._pending: list[_Owed] = []
        self.outage_admitted = 0
        self.outage_refused = 0
        self.reconciled = 0.0
        link.on_recover(self.reconcile)
        self._charges: queue.Queue | None = queue.Queue() if background else None
        self._worker: threading.Thread | None = None

    # ---- keys --------------------------------------------------------------------------
    def _counter(self, rule: BudgetRule, start: datetime) -> str:
        return (f"{self.prefix}budget:{rule.scope}:{rule.subject}:{rule.metric}:"
                f"{rule.period}:{start:%Y%m%d}")

    def _keys(self, rule: BudgetRule, start: datetime) -> list[str]:
        c = self._counter(rule, start)
        stats = f"{self.prefix}budget:{rule.scope}:{rule.subject}:{rule.metric}:stats"
        return [c, c + ":resv", c + ":resvz", c + ":resvh", stats, c + ":done"]

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
            self._see(keys[0], spent_f)
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
        if self._charges is None:
            self._charge_now(team, key_id, cost_usd, energy_j, now, rid)
            return
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._drain, name="greengate-budget-charges",
                                            daemon=True)
            self._worker.start()
        self._charges.put((team, key_id, cost_usd, energy_j, now, rid))

    def _drain(self) -> None:
        assert self._charges is not None
        while True:
            item = self._charges.get()
            try:
                if item is None:
                    return
                self._charge_now(*item)
            except Exception:  # a bug here must not stop later charges
                log.exception("charging a budget failed")
            finally:
                self._charges.task_done()

    def flush(self) -> None:
        """Wait until every charge made so far has reached Redis (or the outage ledger)."""
        if self._charges is not None and self._worker is not None:
            self._charges.join()

    def close(self) -> None:
        """Finish the queued charges and stop the charging thread."""
        if self._charges is not None and self._worker is not None:
            self._charges.put(None)
            self._worker.join(timeout=10)
            self._worker = None

    def _charge_now(self, team: str | None, key_id: int | None, cost_usd: float | None,
                    energy_j: float | None, now: datetime, rid: str | None) -> None:
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
        owed = _Owed(self._keys(rule, start), rid, amount, self._ttl(reset, now), count)
        if not self._send(owed):
            with self._lock:
                self._pending.append(owed)
            if self.link.ok:  # Redis came back while this call failed: reconciled already,
                self.reconcile()  # so settle what just joined the ledger now

    def _send(self, o: _Owed) -> bool:
        """Run the settle script; False when Redis did not confirm it (it may have run: the
        script is idempotent per request id, so sending it again is safe)."""
        try:
            value = self.link.call(lambda r: self._settle(
                keys=o.keys, args=[o.amount, o.rid, o.ttl, "1" if o.count else "0",
                                   STATS_WINDOW, int(time.time() * 1000)], client=r))
        except RedisDown:
            return False
        self._see(o.keys[0], float(value))
        return True

    # ---- views -------------------------------------------------------------------------
    def _see(self, key: str, value: float) -> None:
        """A period's counter only grows: a late answer (an admission read before a charge
        that the charging thread already saw land) must not move the view back."""
        if value > self._seen.get(key, float("-inf")):
            self._seen[key] = value

    def local_spent(self, rule: BudgetRule, now: datetime | None = None) -> float:
        """This replica's view: the last value Redis gave plus what it owes Redis."""
        start, _ = period_bounds(rule.period, now or datetime.now(UTC))
        key = self._counter(rule, start)
        return self._seen.get(key, 0.0) + self._owed_on(key)

    def _owed_on(self, key: str) -> float:
        with self._lock:
            return sum(o.amount for o in self._pending if o.keys[0] == key)

    def spent(self, rule: BudgetRule, now: datetime | None = None) -> float:
        """Spent so far; never raises (Redis away: the local view)."""
        self.flush()  # this replica's own charges first: a reader sees its requests counted
        now = now or datetime.now(UTC)
        start, _ = period_bounds(rule.period, now)
        key = self._counter(rule, start)
        try:
            value = self.link.call(lambda r: r.get(key))
        except RedisDown:
            return self.local_spent(rule, now)
        spent = 0.0 if value is None else float(value)
        self._see(key, spent)
        return spent + self._owed_on(key)

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
            return sum(o.amount for o in self._pending)

    # ---- recovery ----------------------------------------------------------------------
    def reconcile(self) -> None:
        """Redis answers again: send every settle it did not confirm (charges made during
        the outage, and reservations to release), in order, each once per request."""
        with self._lock:
            owed, self._pending = self._pending, []
        done = 0.0
        left = collections.deque(owed)
        while left:
            if not self._send(left[0]):
                break
            done += left.popleft().amount
        with self._lock:
            self._pending[:0] = list(left)
        self.reconciled += done
        if done:
            log.info("budgets: %.6g charged during the redis outage added to the counters", done)


__all__ = ["SharedBudgets", "SharedCounters"]
