"""Budgets in SQL, counters in memory or Redis: load, seed from the decision log, admin edits."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import Engine, delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway.errors import GatewayError
from store import ApiKey, Budget, Decision, FineTuningUsage, Team
from telemetry import BudgetRule, Budgets, MemoryCounters, period_bounds


def _rule(b: Budget) -> BudgetRule:
    return BudgetRule(b.id, b.scope, b.subject, b.metric, b.period, b.limit)  # type: ignore[arg-type]


class BudgetService:
    def __init__(self, engine: Engine, budgets: Budgets | None = None,
                 on_change: Callable[[], None] | None = None) -> None:
        """`budgets`: shared ones (gateway.shared_budgets, Redis) or, by default, counters in
        this process's memory; `on_change` tells the other replicas a rule changed."""
        self.engine = engine
        self.budgets = budgets if budgets is not None else Budgets(MemoryCounters())
        self._on_change = on_change

    def _seed(self, s: Session, rule: BudgetRule) -> None:
        """Start the counter from this period's decisions, and (shared counters) the
        per-request estimate admission reserves from the subject's recent charges."""
        self.budgets.seed(rule, self._spent_so_far(s, rule))
        seed_estimate = getattr(self.budgets, "seed_estimate", None)
        if seed_estimate is None:
            return
        column = Decision.cost_usd if rule.metric == "usd" else Decision.energy_j
        recent = select(column.label("v")).where(column > 0)
        recent = recent.where(Decision.team == rule.subject) if rule.scope == "team" else \
            recent.where(Decision.key_id == int(rule.subject))
        sub = recent.order_by(Decision.created_at.desc()).limit(1000).subquery()
        mean, n = s.execute(select(func.avg(sub.c.v), func.count())).one()
        if mean is not None:
            seed_estimate(rule, float(mean) if rule.metric == "usd" else float(mean) / 3600.0,
                          int(n))

    def _spent_so_far(self, s: Session, rule: BudgetRule) -> float:
        start, _ = period_bounds(rule.period, datetime.now(UTC))
        column = Decision.cost_usd if rule.metric == "usd" else Decision.energy_j
        q = select(func.coalesce(func.sum(column), 0.0)).where(Decision.created_at >= start)
        q = q.where(Decision.team == rule.subject) if rule.scope == "team" else q.where(
            Decision.key_id == int(rule.subject))
        total = float(s.scalar(q) or 0.0)
        # Fine-tuning jobs' training work is charged to the same budgets (its own ledger).
        col = FineTuningUsage.cost_usd if rule.metric == "usd" else FineTuningUsage.energy_j
        q = select(func.coalesce(func.sum(col), 0.0)).where(FineTuningUsage.created_at >= start)
        q = q.where(FineTuningUsage.team == rule.subject) if rule.scope == "team" else q.where(
            FineTuningUsage.key_id == int(rule.subject))
        total += float(s.scalar(q) or 0.0)
        return total if rule.metric == "usd" else total / 3600.0

    def load(self) -> None:
        """Read the rules and seed each counter from this period's decisions (once)."""
        with Session(self.engine) as s:
            rules = [_rule(b) for b in s.scalars(select(Budget).order_by(Budget.id))]
            for r in rules:
                self._seed(s, r)
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
            _check_subject(s, scope, subject)
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
            self._seed(s, rule)
        self.budgets.rules = [*self.budgets.rules, rule]
        if self._on_change is not None:
            self._on_change()
        return self.to_json(rule)

    def delete(self, budget_id: int) -> bool:
        with Session(self.engine) as s, s.begin():
            n = s.execute(delete(Budget).where(Budget.id == budget_id)).rowcount
        self.budgets.rules = [r for r in self.budgets.rules if r.id != budget_id]
        if self._on_change is not None:
            self._on_change()
        return bool(n)


def _check_subject(s: Session, scope: str, subject: str) -> None:
    """A budget names a team or key that exists: one for a typo would never be spent and
    never say so."""
    if scope == "team":
        if s.scalar(select(Team.id).where(Team.name == subject)) is None:
            raise GatewayError(400, f"There is no team {subject!r}, so this budget would never "
                               "apply. Create the team first (POST /admin/teams, `greengate "
                               "teams create`, or a key for it).", param="subject",
                               code="team_not_found")
    elif subject.isdigit() and (int(subject) >= 2**63 or s.get(ApiKey, int(subject)) is None):
        raise GatewayError(400, f"There is no key with id {subject}, so this budget would never "
                           "apply (GET /admin/keys lists the ids).", param="subject",
                           code="key_not_found")
