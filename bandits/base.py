"""Shared vocabulary for contextual bandits: scores, warm-start priors and the abstract bandit.

Every algorithm keeps one ridge-regression model per arm (disjoint LinUCB style) and differs
only in how that model becomes a ranking score while exploring, the one abstract method.
Rewards may be on any scale, but the exploration parameters' defaults assume rewards of order
one (roughly [0, 1]); rescale rewards rather than retuning every algorithm.

Not thread-safe: select() advances the RNG and may add arms, so callers serialise access."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, ClassVar, Self

import numpy as np
from numpy.typing import NDArray

from bandits.linalg import spd_inverse
from bandits.rng import make_rng, rng_from_state, rng_to_state
from bandits.store import ArmStore

Vector = NDArray[np.float64]

STATE_FORMAT = 1


@dataclass(frozen=True, slots=True)
class ArmScore:
    estimate: float  # predicted reward for this context (ridge / posterior mean)
    bonus: float  # exploration actually applied: UCB width, TS sample - mean, or 0
    score: float  # what the bandit ranks by


@dataclass
class ArmPrior:
    """A warm start as ridge sufficient statistics; it replaces the arm's cold ridge*I, so fit
    it with the bandit's own ridge (fit_prior does) unless a different prior is intended."""

    A: NDArray[np.float64]  # (d, d), e.g. ridge*I + w * X^T X
    b: NDArray[np.float64]  # (d,), e.g. w * X^T r
    n: int = 0  # offline observations summarised


def fit_prior(
    X: NDArray[np.float64], r: NDArray[np.float64], ridge: float = 1.0, weight: float = 1.0
) -> ArmPrior:
    """Ridge statistics of offline (context, reward) rows for one arm.

    weight in (0, 1] counts each offline row as `weight` online ones, so logged data that may be
    stale or biased guides early choices without outvoting live feedback for long."""
    X = np.asarray(X, dtype=np.float64)
    r = np.asarray(r, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] < 1:
        raise ValueError(f"X must be 2-D (rows, dim), got shape {X.shape}")
    if r.shape != (X.shape[0],):
        raise ValueError(f"r must have shape ({X.shape[0]},), got {r.shape}")
    if not (np.isfinite(X).all() and np.isfinite(r).all()):
        raise ValueError("X and r must be finite")
    _check_ridge(ridge)
    if not (_is_number(weight) and 0.0 < weight <= 1.0):
        raise ValueError(f"weight must be in (0, 1], got {weight!r}")
    a = ridge * np.eye(X.shape[1]) + weight * (X.T @ X)
    return ArmPrior(A=(a + a.T) / 2.0, b=weight * (X.T @ r), n=int(X.shape[0]))


def _is_number(value: object) -> bool:
    # numbers.Real admits NumPy scalars; bool is excluded as almost certainly a slip.
    return isinstance(value, Real) and not isinstance(value, bool)


def _check_ridge(ridge: float) -> None:
    if not (_is_number(ridge) and math.isfinite(ridge) and ridge > 0.0):
        raise ValueError(f"ridge must be a positive finite number, got {ridge!r}")


class Bandit(ABC):
    """Per-arm linear reward models over a d-dimensional context.

    Subclasses set `name` and `defaults` (their parameters and default values) and implement
    `_check_params` (range checks) and `_explore` (scoring while exploring)."""

    name: ClassVar[str]
    defaults: ClassVar[dict[str, float]] = {}
    # True when exploring means "this arm, whatever the estimates" (epsilon-greedy), rather
    # than an optimistic score to be weighed like any other (UCB, Thompson sampling). A caller
    # that adds its own terms to the score must then honour the pick, or it never explores.
    explores_by_choice: ClassVar[bool] = False

    def __init__(
        self, dim: int, ridge: float = 1.0, seed: int | None = None, **params: float
    ) -> None:
        if isinstance(dim, bool) or not isinstance(dim, Integral) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        _check_ridge(ridge)
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            known = ", ".join(sorted(self.defaults)) or "none"
            raise ValueError(f"{self.name}: unknown parameter(s) {unknown}; known: {known}")
        merged: dict[str, float] = {}
        for key, default in self.defaults.items():
            value = params.get(key, default)
            if not _is_number(value):
                raise ValueError(f"{self.name}: {key} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{self.name}: {key} must be finite, got {value!r}")
            merged[key] = float(value)
        self._check_params(merged)
        self.dim = int(dim)
        self.ridge = float(ridge)
        self._params = merged
        self._rng = make_rng(seed)
        self._store = ArmStore(self.dim, self.ridge)
        self._selects = 0
        self._updates = 0

    # -- subclass hooks -------------------------------------------------------------------

    @abstractmethod
    def _check_params(self, params: dict[str, float]) -> None:
        """Raise ValueError for out-of-range parameters (types and finiteness are checked)."""

    @abstractmethod
    def _explore(
        self, x: Vector, idx: NDArray[np.intp], estimate: Vector
    ) -> tuple[Vector, Vector]:
        """(bonus, score) per slot in idx while exploring; estimate is theta[idx] @ x."""

    # -- arms ---------------------------------------------------------------------------------

    @property
    def params(self) -> dict[str, float]:
        return dict(self._params)

    @property
    def arms(self) -> list[str]:
        return list(self._store.names)

    def add_arm(self, arm: str, prior: ArmPrior | None = None) -> None:
        """Join an arm. With a prior, its statistics replace whatever the arm had; without one,
        a new arm starts cold and an existing arm is left untouched."""
        _check_arm(arm)
        if prior is None:
            self._store.slot(arm)
            return
        a = np.asarray(prior.A, dtype=np.float64)
        b = np.asarray(prior.b, dtype=np.float64)
        d = self.dim
        if a.shape != (d, d) or b.shape != (d,):
            raise ValueError(f"prior for {arm!r} must have A ({d}, {d}) and b ({d},), "
                             f"got {a.shape} and {b.shape}")
        if not (np.isfinite(a).all() and np.isfinite(b).all()):
            raise ValueError(f"prior for {arm!r} is not finite")
        n = prior.n
        if isinstance(n, bool) or not isinstance(n, Integral) or n < 0:
            raise ValueError(f"prior for {arm!r}: n must be a non-negative int, got {n!r}")
        try:
            a_inv = spd_inverse(a)
        except ValueError as exc:
            raise ValueError(f"prior for {arm!r}: A {exc}") from None
        self._store.put(arm, a_inv, b.copy(), int(n))

    def remove_arm(self, arm: str) -> None:
        """Leave: the arm's statistics are dropped; if it is offered again it starts cold."""
        if arm not in self._store:
            raise ValueError(f"unknown arm {arm!r}")
        self._store.remove(arm)

    # -- decisions ----------------------------------------------------------------------------

    def select(
        self, context: NDArray[np.float64], arms: Sequence[str], explore: bool = True
    ) -> dict[str, ArmScore]:
        """Scores for exactly `arms`, in their order (duplicates collapse to the first); arms
        never seen before are added cold. explore=False is pure exploitation: bonus 0, score
        the estimate, no randomness consumed."""
        x = self._check_context(context)
        names = _check_arms(arms)
        idx = self._store.slots(names)
        estimate = self._store.theta[idx] @ x
        if explore:
            bonus, score = self._explore(x, idx, estimate)
        else:
            bonus, score = np.zeros_like(estimate), estimate
        self._selects += 1
        return {
            a: ArmScore(e, bn, s)
            for a, e, bn, s in zip(
                names, estimate.tolist(), bonus.tolist(), score.tolist(), strict=True
            )
        }

    def choose(
        self, context: NDArray[np.float64], arms: Sequence[str], explore: bool = True
    ) -> str:
        """The top-scoring arm; ties go to the one earliest in `arms`."""
        scores = self.select(context, arms, explore)
        return max(scores, key=lambda a: scores[a].score)  # max keeps the first of equals

    def update(self, context: NDArray[np.float64], arm: str, reward: float) -> None:
        """Feed back the reward observed for `arm` in `context`; an unknown arm (for example
        one removed since it was chosen) is added cold and then updated, so feedback that
        arrives late is never lost."""
        x = self._check_context(context)
        _check_arm(arm)
        # bool passes on purpose: a success flag is a legitimate 0/1 reward.
        if not isinstance(reward, Real) or not math.isfinite(reward):
            raise ValueError(f"reward must be a finite number, got {reward!r}")
        r = float(reward)
        self._store.update(self._store.slot(arm), x, r)
        self._updates += 1

    def _check_context(self, context: NDArray[np.float64]) -> Vector:
        try:
            x = np.asarray(context, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError("context must be a numeric vector") from None
        if x.shape != (self.dim,):
            raise ValueError(f"context must have shape ({self.dim},), got {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("context must be finite")
        return x

    # -- persistence --------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Everything needed to resume exactly, as plain JSON types (floats survive a JSON
        round trip bit for bit, so a reload scores identically)."""
        return {
            "format": STATE_FORMAT,
            "algorithm": self.name,
            "dim": self.dim,
            "ridge": self.ridge,
            "params": dict(self._params),
            "counters": {"selects": self._selects, "updates": self._updates},
            "rng": rng_to_state(self._rng),
            "arms": self._store.to_state(),
        }

    @classmethod
    def load(cls, state: dict[str, Any]) -> Self:
        """Rebuild from state(); on a concrete class the algorithm must match (use
        bandits.load_bandit to dispatch on it)."""
        if not isinstance(state, dict):
            raise ValueError("state must be a dict")
        algorithm = state.get("algorithm")
        want = getattr(cls, "name", None)
        if want is None:
            raise ValueError("Bandit.load needs a concrete class; use bandits.load_bandit")
        if algorithm != want:
            raise ValueError(f"state is for algorithm {algorithm!r}, expected {want!r}")
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"unsupported state format {state.get('format')!r}")
        try:
            dim, ridge, params = state["dim"], state["ridge"], state["params"]
            counters, rng, arms = state["counters"], state["rng"], state["arms"]
            selects, updates = counters["selects"], counters["updates"]
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed bandit state: missing {exc}") from None
        if not isinstance(params, dict) or not isinstance(arms, list):
            raise ValueError("malformed bandit state: params must be a dict, arms a list")
        if not all(isinstance(c, int) and c >= 0 for c in (selects, updates)):
            raise ValueError("malformed bandit state: counters must be non-negative ints")
        # seed=0 only avoids reading OS entropy; the saved generator replaces it below.
        try:
            bandit = cls(dim, ridge=ridge, seed=0, **params)
        except TypeError as exc:
            raise ValueError(f"malformed bandit state: {exc}") from None
        bandit._rng = rng_from_state(rng)
        bandit._store = ArmStore.from_state(bandit.dim, bandit.ridge, arms)
        bandit._selects, bandit._updates = selects, updates
        return bandit


def _check_arm(arm: str) -> None:
    if not isinstance(arm, str) or not arm:
        raise ValueError(f"arm must be a non-empty str, got {arm!r}")


def _check_arms(arms: Sequence[str]) -> list[str]:
    if isinstance(arms, str):
        raise ValueError("arms must be a sequence of names, not a single str")
    try:
        names = list(dict.fromkeys(arms))
    except TypeError:
        raise ValueError("arms must be a sequence of str names") from None
    if not names:
        raise ValueError("arms must not be empty")
    for arm in names:
        _check_arm(arm)
    return names
