"""Budgets in SQL, counters in memory or Redis: load, seed from the decision log, admin edits."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Engine, delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway.errors import GatewayError
from store.schema import Budget, Decision
from telemetry.budgets import BudgetRule, Budgets, MemoryCounters, RedisCounters, period_bounds


def _rule(b: Budget) -> BudgetRule:
    return BudgetRule(b.id, b.scope, b.subject, b.metric, b.period, b.limit)  # type: ignore[arg-type]


class BudgetService:
    def __init__(self, engine: Engine, redis_url: str | None) -> None:
        self.engine = engine
        self.budgets = Budgets(RedisCounters(redis_url) if redis_url else MemoryCounters())

    def _spent_so_far(self, s: Session, rule: BudgetRule) -> float:
        start, _ = period_bounds(rule.period, datetime.now(UTC))
        column = Decision.cost_usd if rule.metric == "usd" else Decision.energy_j
        q = select(func.coalesce(func.sum(column), 0.0)).where(Decision.created_at >= start)
        q = q.where(Decision.team == rule.subject) if rule.scope == "team" else q.where(
            Decision.key_id == int(rule.subject))
        total = float(s.scalar(q) or 0.0)
        return total if rule.metric == "usd" else total / 3600.0

    def load(self) -> None:
        """Read the rules and seed each counter from this period's decisions (once)."""
        with Session(self.engine) as s:
            rules = [_rule(b) for b in s.scalars(select(Budget).order_by(Budget.id))]
            for r in rules:
                self.budgets.seed(r, self._spent_so_far(s, r))
        self.budgets.rules = rules

    def to_json(self, rule: BudgetRule) -> dict:
        _, reset = period_bounds(rule.period, datetime.now(UTC))
        return {"id": rule.id, "scope": rule.scope, "subject": rule.subject,
                "metric": rule.metric, "period": rule.period, "limit": rule.limit,
                "spent": round(self.budgets.spent(rule), 9), "resets_at": reset.isoformat()}

    def list(self) -> list[dict]:
        return [self.to_json(r) for r in self.budgets.rules]

    def create(self, scope: str, subject: str, metric: str, period: str, limit: float) -> dict:
        with Session(self.engine) as s, s.begin():
            b = Budget(scope=scope, subject=subject, metric=metric, period=period, limit=limit,
                       created_at=datetime.now(UTC))
            s.add(b)
            try:
                s.flush()
            except IntegrityError:
                raise GatewayError(409, f"A {period} {metric} budget for {scope} {subject!r} "
                                   "already exists; delete it first.",
                                   code="budget_exists") from None
            rule = _rule(b)
            self.budgets.seed(rule, self._spent_so_far(s, rule))
        self.budgets.rules = [*self.budgets.rules, rule]
        return self.to_json(rule)

    def delete(self, budget_id: int) -> bool:
        with Session(self.engine) as s, s.begin():
            n = s.execute(delete(Budget).where(Budget.id == budget_id)).rowcount
        self.budgets.rules = [r for r in self.budgets.rules if r.id != budget_id]
        return bool(n)
