"""Epsilon-greedy over ridge estimates, with exploration decaying as evidence accumulates."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from bandits.base import Bandit, Vector


class EpsilonGreedy(Bandit):
    """With probability eps one uniformly drawn offered arm is lifted just above the best
    estimate (its bonus is exactly that lift); otherwise arms rank by ridge estimate.

    eps = min(1, epsilon0 / sqrt(t)), t = max(1, observations behind the offered arms): online
    updates plus the `n` of any warm prior. Counting evidence rather than select() calls keeps
    exploration up while feedback is sparse or delayed, lets a warm start begin nearly greedy,
    and needs no extra state (it is read off the per-arm counts)."""

    name = "egreedy"
    explores_by_choice = True
    defaults = {"epsilon0": 1.0}

    @property
    def epsilon0(self) -> float:
        return self._params["epsilon0"]

    def _check_params(self, params: dict[str, float]) -> None:
        if params["epsilon0"] < 0:
            raise ValueError(f"egreedy: epsilon0 must be >= 0, got {params['epsilon0']}")

    def epsilon(self, arms: Sequence[str]) -> float:
        """The exploration probability select() would use for these arms (unknown ones count
        as zero observations)."""
        slots = [self._store.index_of(a) for a in dict.fromkeys(arms)]
        return self._epsilon(sum(int(self._store.n[k]) for k in slots if k is not None))

    def _epsilon(self, observations: int) -> float:
        return min(1.0, self.epsilon0 / math.sqrt(max(1, observations)))

    def _explore(
        self, x: Vector, idx: NDArray[np.intp], estimate: Vector
    ) -> tuple[Vector, Vector]:
        bonus = np.zeros_like(estimate)
        score = estimate.copy()
        # Both draws happen every time so the RNG stream depends only on the call sequence.
        roll = self._rng.random()
        pick = int(self._rng.integers(len(idx)))
        if roll < self._epsilon(int(self._store.n[idx].sum())) and len(idx) > 1:
            best_other = np.delete(estimate, pick).max()
            score[pick] = max(estimate[pick], np.nextafter(best_other, np.inf))
            bonus[pick] = score[pick] - estimate[pick]
        return bonus, score
