"""Spending caps in dollars and watt-hours, per team or key, per UTC day or month.

Checked before the upstream call against counters kept in memory (or in Redis, shared by
replicas), never by a database query per request. Counters start from the decision log's
figures for the current period, read once when the gateway starts or a budget is created.
A request is charged after it finishes, so concurrent requests can overshoot a cap by at most
their own cost."""

from __future__ import annotations

import calendar
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from extras import require

Scope = Literal["team", "key"]
Metric = Literal["usd", "wh"]
Period = Literal["day", "month"]


@dataclass(frozen=True)
class BudgetRule:
    id: int
    scope: Scope
    subject: str  # team name, or key id as text
    metric: Metric
    period: Period
    limit: float

    def describe(self) -> str:
        unit = f"${self.limit:g}" if self.metric == "usd" else f"{self.limit:g} Wh"
        who = f"team '{self.subject}'" if self.scope == "team" else f"key {self.subject}"
        return f"the {'daily' if self.period == 'day' else 'monthly'} {unit} budget of {who}"


def period_bounds(period: Period, now: datetime) -> tuple[datetime, datetime]:
    """[start, reset) of the UTC day or month containing `now`."""
    now = now.astimezone(UTC)
    if period == "day":
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return start, start + timedelta(days=1)
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    days = calendar.monthrange(start.year, start.month)[1]
    return start, start + timedelta(days=days)


def counter_key(rule: BudgetRule, start: datetime) -> str:
    return f"gg:budget:{rule.scope}:{rule.subject}:{rule.metric}:{rule.period}:{start:%Y%m%d}"


class CounterStore(ABC):
    @abstractmethod
    def get(self, key: str) -> float | None: ...

    @abstractmethod
    def seed(self, key: str, value: float, ttl_s: int) -> None:
        """Set the starting value unless the counter already exists (another replica)."""

    @abstractmethod
    def add(self, key: str, amount: float, ttl_s: int) -> float: ...


class MemoryCounters(CounterStore):
    def __init__(self) -> None:
        self._values: dict[str, float] = {}

    def get(self, key: str) -> float | None:
        return self._values.get(key)

    def seed(self, key: str, value: float, ttl_s: int) -> None:
        self._values.setdefault(key, value)

    def add(self, key: str, amount: float, ttl_s: int) -> float:
        self._values[key] = self._values.get(key, 0.0) + amount
        return self._values[key]


class RedisCounters(CounterStore):
    """Counters shared by every replica through Redis (INCRBYFLOAT is atomic)."""

    def __init__(self, url: str) -> None:
        redis = require("redis", "redis", "budgets shared through Redis")
        self._r = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)

    def get(self, key: str) -> float | None:
        value = self._r.get(key)
        return None if value is None else float(value)

    def seed(self, key: str, value: float, ttl_s: int) -> None:
        self._r.set(key, value, ex=ttl_s, nx=True)

    def add(self, key: str, amount: float, ttl_s: int) -> float:
        pipe = self._r.pipeline()
        pipe.incrbyfloat(key, amount)
        pipe.expire(key, ttl_s)
        return float(pipe.execute()[0])


@dataclass(frozen=True)
class Exceeded:
    rule: BudgetRule
    spent: float
    resets_at: datetime


class Budgets:
    """The rules, their counters, and the two calls on the request path: check and charge."""

    def __init__(self, store: CounterStore) -> None:
        self.store = store
        self.rules: list[BudgetRule] = []

    def _applies(self, rule: BudgetRule, team: str | None, key_id: int | None) -> bool:
        if rule.scope == "team":
            return team is not None and rule.subject == team
        return key_id is not None and rule.subject == str(key_id)

    @staticmethod
    def _ttl(reset: datetime, now: datetime) -> int:
        return int((reset - now).total_seconds()) + 3600

    def check(self, team: str | None, key_id: int | None,
              now: datetime | None = None, rid: str | None = None) -> Exceeded | None:
        """The first exhausted rule that applies, or None. `rid` (the request) is for
        counters that reserve on admission (gateway.shared_budgets); here it is unused."""
        now = now or datetime.now(UTC)
        for rule in self.rules:
            if not self._applies(rule, team, key_id):
                continue
            start, reset = period_bounds(rule.period, now)
            spent = self.store.get(counter_key(rule, start)) or 0.0
            if spent >= rule.limit:
                return Exceeded(rule, spent, reset)
        return None

    def charge(self, team: str | None, key_id: int | None, cost_usd: float | None,
               energy_j: float | None, now: datetime | None = None,
               rid: str | None = None) -> None:
        now = now or datetime.now(UTC)
        for rule in self.rules:
            if not self._applies(rule, team, key_id):
                continue
            amount = cost_usd if rule.metric == "usd" else (
                None if energy_j is None else energy_j / 3600.0)
            if not amount:
                continue
            start, reset = period_bounds(rule.period, now)
            self.store.add(counter_key(rule, start), amount, self._ttl(reset, now))

    def seed(self, rule: BudgetRule, spent: float, now: datetime | None = None) -> None:
        now = now or datetime.now(UTC)
        start, reset = period_bounds(rule.period, now)
        self.store.seed(counter_key(rule, start), spent, self._ttl(reset, now))

    def spent(self, rule: BudgetRule, now: datetime | None = None) -> float:
        start, _ = period_bounds(rule.period, now or datetime.now(UTC))
        return self.store.get(counter_key(rule, start)) or 0.0
