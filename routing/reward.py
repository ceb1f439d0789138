"""The objective: r = (1 - lambda) * quality - lambda * energy_norm - mu * cost_norm.

Energy and cost are normalised by explicit bounds (settings), clipped to [0, 1], so lambda and
mu mean the same thing across pools."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RewardBounds:
    energy_max_j: float  # energy at or above this counts as 1
    cost_max_usd: float  # cost at or above this counts as 1

    def energy_norm(self, joules: float | None) -> float:
        return 0.0 if joules is None else min(max(joules / self.energy_max_j, 0.0), 1.0)

    def cost_norm(self, usd: float | None) -> float:
        return 0.0 if usd is None else min(max(usd / self.cost_max_usd, 0.0), 1.0)


def reward(
    quality: float,
    energy_j: float | None,
    cost_usd: float | None,
    lambda_: float,
    mu: float,
    bounds: RewardBounds,
) -> float:
    return ((1.0 - lambda_) * quality - lambda_ * bounds.energy_norm(energy_j)
            - mu * bounds.cost_norm(cost_usd))
