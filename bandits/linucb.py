"""LinUCB (Li et al. 2010, disjoint models): optimism in the face of uncertainty."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from bandits.base import Bandit, Vector


class LinUCB(Bandit):
    """score = estimate + alpha * sqrt(x^T A_inv x); alpha (default 1.0) trades exploration
    for exploitation and is in reward units per unit of posterior standard deviation."""

    name = "linucb"
    defaults = {"alpha": 1.0}

    @property
    def alpha(self) -> float:
        return self._params["alpha"]

    def _check_params(self, params: dict[str, float]) -> None:
        if params["alpha"] < 0:
            raise ValueError(f"linucb: alpha must be >= 0, got {params['alpha']}")

    def _explore(
        self, x: Vector, idx: NDArray[np.intp], estimate: Vector
    ) -> tuple[Vector, Vector]:
        variance = (self._store.A_inv[idx] @ x) @ x
        # Rounding can leave a long-updated A_inv a hair indefinite; clip rather than emit NaN.
        bonus = self.alpha * np.sqrt(np.maximum(variance, 0.0))
        return bonus, estimate + bonus
