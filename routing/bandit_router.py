"""The bandit router: a contextual bandit estimates each member's quality for this query (with
an exploration bonus), and the team's lambda and mu trade it against the energy and cost the
member is expected to spend on it.

The bandit learns quality only. Energy and cost are known per request before the call (tokens
times price, tokens times J/token), so spending exploration on them would waste feedback, and a
policy change to lambda or mu takes effect on the very next request."""

from __future__ import annotations

from typing import Any

from bandits import Bandit
from routing.reward import RewardBounds, reward
from routing.router import Candidate, Ranked, Router, RouteRequest, register


@register
class BanditRouter(Router):
    name = "bandit"
    needs_features = True

    def __init__(self, bandit: Bandit, bounds: RewardBounds) -> None:
        self.bandit = bandit
        self.bounds = bounds

    @classmethod
    def create(cls, **deps: Any) -> Router:
        return cls(deps["bandit"], deps["bounds"])

    def rank(self, request: RouteRequest, candidates: list[Candidate]) -> list[Ranked]:
        if request.context is None:
            raise ValueError("the bandit router needs the request's context vector")
        names = [c.name for c in candidates]
        scores = self.bandit.select(request.context, names, explore=request.explore)
        # Members with no energy figure are charged like the hungriest known one, so that
        # missing data never looks green.
        known = [c.expected_energy_j for c in candidates if c.expected_energy_j is not None]
        worst = max(known) if known else None
        ranked = []
        for c in candidates:
            s = scores[c.name]
            energy = c.expected_energy_j if c.expected_energy_j is not None else worst
            value = reward(s.score, energy, c.expected_cost_usd, request.lambda_, request.mu,
                           self.bounds)
            ranked.append(Ranked(c.name, value, {
                "quality_estimate": round(s.estimate, 6),
                "bonus": round(s.bonus, 6),
                "expected_energy_j": None if energy is None else round(energy, 6),
                "energy_imputed": c.expected_energy_j is None and energy is not None,
                "expected_cost_usd": c.expected_cost_usd,
                "healthy": c.healthy,
            }))
        explored = {n for n, s in scores.items() if s.bonus > 0} if (
            request.explore and self.bandit.explores_by_choice) else set()
        for r in ranked:
            r.detail["explored"] = r.name in explored
        # An epsilon-greedy exploration pick goes first: weighed against energy and cost it
        # would almost never win, and the bandit would never explore.
        ranked.sort(key=lambda r: (not r.detail["healthy"], not r.detail["explored"], -r.score,
                                   r.detail["energy_imputed"]))
        return ranked
