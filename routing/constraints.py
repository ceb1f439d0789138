"""Hard objectives a team can set instead of (or on top of) the lambda/mu trade-off, phrased
the way people ask for them:

    min_quality             the cheapest member whose predicted quality is >= q
    max_cost_per_1k_usd     the best predicted quality among members whose expected cost for
                            this request is <= x / 1000 dollars ("$x per 1k requests")
    max_energy_j            ... whose expected energy for this request is <= y joules

Budgets filter first; then min_quality picks the cheapest (by expected cost, then energy) of
what clears the bar, else the best predicted quality wins. A member whose cost or energy is
unknown cannot be shown to meet a budget, so it does not. When nothing meets the constraint,
the request is not refused: it goes to the best-quality member allowed, and the outcome says
so (the gateway writes it into the decision row and the x-greengate-constraint header).
Pure logic, no I/O."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Constraint:
    min_quality: float | None = None
    max_cost_per_1k_usd: float | None = None
    max_energy_j: float | None = None

    @property
    def active(self) -> bool:
        return any(
            v is not None for v in (self.min_quality, self.max_cost_per_1k_usd, self.max_energy_j)
        )

    def describe(self) -> str:
        parts = []
        if self.min_quality is not None:
            parts.append(f"quality >= {self.min_quality:g}")
        if self.max_cost_per_1k_usd is not None:
            parts.append(f"cost <= ${self.max_cost_per_1k_usd:g} per 1k requests")
        if self.max_energy_j is not None:
            parts.append(f"energy <= {self.max_energy_j:g} J per request")
        return ", ".join(parts)


@dataclass(frozen=True)
class Option:
    name: str
    quality: float  # predicted (optimistic while exploring)
    cost_usd: float | None
    energy_j: float | None
    healthy: bool = True


@dataclass(frozen=True)
class ConstraintOutcome:
    met: bool
    chosen: str
    feasible: tuple[str, ...]
    note: str

    def to_json(self) -> dict:
        return {
            "met": self.met,
            "chosen": self.chosen,
            "feasible": list(self.feasible),
            "note": self.note,
        }


def _within(o: Option, c: Constraint) -> bool:
    if c.max_cost_per_1k_usd is not None and (
        o.cost_usd is None or o.cost_usd * 1000.0 > c.max_cost_per_1k_usd
    ):
        return False
    return not (c.max_energy_j is not None and (o.energy_j is None or o.energy_j > c.max_energy_j))


def _cheap_key(o: Option) -> tuple[float, float, str]:
    inf = math.inf
    return (
        inf if o.cost_usd is None else o.cost_usd,
        inf if o.energy_j is None else o.energy_j,
        o.name,
    )


def order_under(c: Constraint, options: list[Option]) -> tuple[list[str], ConstraintOutcome]:
    """Members best first under the constraint (healthy ones first), and what happened."""
    if not options:
        raise ValueError("no options to choose from")
    pool = [o for o in options if o.healthy] or list(options)
    by_quality = sorted(pool, key=lambda o: (-o.quality, _cheap_key(o)))
    budget_ok = [o for o in pool if _within(o, c)]
    if c.min_quality is not None:
        feasible = sorted((o for o in budget_ok if o.quality >= c.min_quality), key=_cheap_key)
    else:
        feasible = sorted(budget_ok, key=lambda o: (-o.quality, _cheap_key(o)))
    if feasible:
        head = feasible
        note = f"met: {c.describe()}"
        met = True
    else:
        head = by_quality[:1]
        met = False
        why = (
            "no member meets the budget"
            if not budget_ok
            else f"no member within budget is predicted to reach quality {c.min_quality:g}"
        )
        note = (
            f"unmet ({c.describe()}): {why}; fell back to the best-quality member "
            f"allowed, {head[0].name}"
        )
    seen = {o.name for o in head}
    rest = [o.name for o in by_quality if o.name not in seen]
    rest += [o.name for o in options if o.name not in seen and o.name not in rest]
    order = [o.name for o in head] + rest
    return order, ConstraintOutcome(met, order[0], tuple(o.name for o in feasible), note)
