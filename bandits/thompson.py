"""Linear Thompson sampling (Agrawal & Goyal 2013): rank by a draw from each arm's posterior."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from bandits.base import Bandit, Vector
from bandits.linalg import Matrix, sampling_factors


class LinearThompson(Bandit):
    """theta_k ~ N(theta_hat_k, v^2 A_inv_k) per arm, score = theta_k . x; v (default 0.5) is
    the posterior scale, roughly the reward noise standard deviation."""

    name = "lints"
    defaults = {"v": 0.5}

    def __init__(
        self, dim: int, ridge: float = 1.0, seed: int | None = None, **params: float
    ) -> None:
        super().__init__(dim, ridge, seed, **params)
        # Cholesky factors of A_inv, slot-aligned with the store and tagged with the store stamp
        # they were computed from: between two selects usually only the updated arm changed, so
        # this turns k factorisations per select into about one. Derived data, never persisted.
        self._factors: Matrix = np.empty((0, dim, dim))
        self._factor_stamps: NDArray[np.int64] = np.empty(0, dtype=np.int64)

    @property
    def v(self) -> float:
        return self._params["v"]

    def _check_params(self, params: dict[str, float]) -> None:
        if params["v"] < 0:
            raise ValueError(f"lints: v must be >= 0, got {params['v']}")

    def _explore(
        self, x: Vector, idx: NDArray[np.intp], estimate: Vector
    ) -> tuple[Vector, Vector]:
        factors = self._factors_for(idx)
        z = self._rng.standard_normal((len(idx), self.dim))
        theta = self._store.theta[idx] + self.v * (factors @ z[:, :, None])[:, :, 0]
        score = theta @ x
        return score - estimate, score

    def _factors_for(self, idx: NDArray[np.intp]) -> Matrix:
        store = self._store
        if len(self._factor_stamps) != len(store):
            # Arms joined or left and slots may have shifted; stamps are never reused, so
            # marking everything stale (-1) is always safe and membership changes are rare.
            self._factors = np.empty_like(store.A_inv)
            self._factor_stamps = np.full(len(store), -1, dtype=np.int64)
        stale = idx[self._factor_stamps[idx] != store.stamp[idx]]
        if stale.size:
            self._factors[stale] = sampling_factors(store.A_inv[stale])
            self._factor_stamps[stale] = store.stamp[stale]
        return self._factors[idx]
