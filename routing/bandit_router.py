"""The bandit router: a contextual bandit estimates each member's quality for this query (with
an exploration bonus), and the team's lambda and mu trade it against the energy and cost the
member is expected to spend on it; or, when the team set a hard objective, the constraint
(routing.constraints) picks among the members by that estimate.

With a quality prior (routing.quality_prior) the estimate is prior mean + the bandit's
residual: the offline predictor says what is known from public outcome data, the bandit learns
online how this deployment differs, starting from a spread equal to the prior's uncertainty.
Feedback must then be the residual (`residual_reward`), which the gateway computes from the
prior mean written in the decision row.

The bandit learns quality only. Energy and cost are known per request before the call (tokens
times price, tokens times J/token), so spending exploration on them would waste feedback, and a
policy change to lambda or mu takes effect on the very next request."""

from __future__ import annotations

from typing import Any

from bandits import Bandit
from routing.constraints import Option, order_under
from routing.quality_prior import QualityPrior
from routing.reward import RewardBounds, reward
from routing.router import Candidate, Ranked, Router, RouteRequest


def residual_reward(score: float, prior_mean: float | None) -> float:
    """What the bandit is updated with: observed quality minus the prior mean it was routed on."""
    return score - (prior_mean or 0.0)


class BanditRouter(Router):
    name = "bandit"
    needs_features = True

    def __init__(
        self, bandit: Bandit, bounds: RewardBounds, prior: QualityPrior | None = None
    ) -> None:
        self.bandit = bandit
        self.bounds = bounds
        self.prior = prior

    @classmethod
    def create(cls, **deps: Any) -> Router:
        return cls(deps["bandit"], deps["bounds"], deps.get("prior"))

    def rank(self, request: RouteRequest, candidates: list[Candidate]) -> list[Ranked]:
        if request.context is None:
            raise ValueError("the bandit router needs the request's context vector")
        names = [c.name for c in candidates]
        scores = self.bandit.select(request.context, names, explore=request.explore)
        priors = (
            self.prior.estimate(
                names, request.embedding, request.context, request.features.get("task")
            )
            if self.prior is not None
            else {}
        )
        # Members with no energy figure are charged like the hungriest known one, so that
        # missing data never looks green.
        known = [c.expected_energy_j for c in candidates if c.expected_energy_j is not None]
        worst = max(known) if known else None
        ranked = []
        for c in candidates:
            s = scores[c.name]
            p = priors.get(c.name)
            offset = p.mean if p is not None else 0.0
            energy = c.expected_energy_j if c.expected_energy_j is not None else worst
            value = reward(
                offset + s.score,
                energy,
                c.expected_cost_usd,
                request.lambda_,
                request.mu,
                self.bounds,
            )
            detail: dict[str, Any] = {
                "quality_estimate": round(offset + s.estimate, 6),
                "bonus": round(s.bonus, 6),
                "expected_energy_j": None if energy is None else round(energy, 6),
                "energy_imputed": c.expected_energy_j is None and energy is not None,
                "expected_cost_usd": c.expected_cost_usd,
                "healthy": c.healthy,
            }
            if p is not None:
                detail.update(
                    prior=p.source, prior_mean=round(p.mean, 6), prior_sigma=round(p.sigma, 6)
                )
            ranked.append(Ranked(c.name, value, detail))
        explored = (
            {n for n, s in scores.items() if s.bonus > 0}
            if (request.explore and self.bandit.explores_by_choice)
            else set()
        )
        for r in ranked:
            r.detail["explored"] = r.name in explored
        constraint = request.constraint
        if constraint is not None and constraint.active:
            return self._constrained(request, ranked, candidates)
        # An epsilon-greedy exploration pick goes first: weighed against energy and cost it
        # would almost never win, and the bandit would never explore.
        ranked.sort(
            key=lambda r: (
                not r.detail["healthy"],
                not r.detail["explored"],
                -r.score,
                r.detail["energy_imputed"],
            )
        )
        return ranked

    def _constrained(
        self, request: RouteRequest, ranked: list[Ranked], candidates: list[Candidate]
    ) -> list[Ranked]:
        """Order by the hard objective on the optimistic quality (estimate + bonus), so that
        exploration still happens: a cheap member is tried when it might clear the bar."""
        assert request.constraint is not None
        by_name = {r.name: r for r in ranked}
        cand = {c.name: c for c in candidates}
        options = [
            Option(
                r.name,
                min(1.0, max(0.0, r.detail["quality_estimate"] + r.detail["bonus"])),
                cand[r.name].expected_cost_usd,
                cand[r.name].expected_energy_j,
                r.detail["healthy"],
            )
            for r in ranked
        ]
        order, outcome = order_under(request.constraint, options)
        out = [by_name[n] for n in order]
        out[0].detail["constraint"] = outcome.to_json()
        return out
