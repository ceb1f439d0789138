"""Contextual bandits in pure NumPy: per-arm ridge models scored by LinUCB, linear Thompson
sampling or epsilon-greedy. No I/O; state() / load_bandit() give JSON-ready snapshots."""

from __future__ import annotations

from typing import Any

from bandits.base import ArmPrior, ArmScore, Bandit, fit_prior
from bandits.epsilon_greedy import EpsilonGreedy
from bandits.linucb import LinUCB
from bandits.thompson import LinearThompson

BANDITS: dict[str, type[Bandit]] = {
    cls.name: cls for cls in (LinUCB, LinearThompson, EpsilonGreedy)
}


def _lookup(name: object) -> type[Bandit]:
    try:
        return BANDITS[name]  # type: ignore[index]
    except (KeyError, TypeError):
        raise ValueError(f"unknown bandit {name!r}; known: {', '.join(sorted(BANDITS))}") from None


def make_bandit(name: str, dim: int, **params: Any) -> Bandit:
    """Build by registry name; params are ridge, seed and the algorithm's own (e.g. alpha)."""
    return _lookup(name)(dim, **params)


def load_bandit(state: dict[str, Any]) -> Bandit:
    """Inverse of Bandit.state(), dispatching on state["algorithm"]."""
    if not isinstance(state, dict):
        raise ValueError("state must be a dict")
    return _lookup(state.get("algorithm")).load(state)


__all__ = [
    "BANDITS",
    "ArmPrior",
    "ArmScore",
    "Bandit",
    "EpsilonGreedy",
    "LinUCB",
    "LinearThompson",
    "fit_prior",
    "load_bandit",
    "make_bandit",
]
