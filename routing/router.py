"""The routing seam: one abstract method, a registry of implementations.

The gateway hands a router the candidates the key and policy allow; the router ranks them.
The bandit router (routing brain issue) registers itself here beside the default."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from routing.constraints import Constraint


@dataclass(frozen=True, slots=True)
class Candidate:
    name: str
    input_per_1m: float
    output_per_1m: float
    healthy: bool
    context_window: int | None = None
    tags: tuple[str, ...] = ()
    # What serving this request is expected to cost, from the request's tokens:
    expected_cost_usd: float | None = None
    expected_energy_j: float | None = None
    latency_ms: float | None = None  # recent latency (EWMA), for SLOs


@dataclass(frozen=True, slots=True)
class RouteRequest:
    endpoint: str
    body: dict
    team: str | None
    features: dict[str, Any] = field(default_factory=dict)
    context: np.ndarray | None = None  # the bandit's context vector
    lambda_: float = 0.4  # weight of energy (team policy)
    mu: float = 0.1  # weight of cost (team policy)
    explore: bool = True
    embedding: np.ndarray | None = None  # the query's MiniLM embedding (quality predictors)
    constraint: Constraint | None = None  # a team's hard objective (routing.constraints)


@dataclass(frozen=True, slots=True)
class Ranked:
    name: str
    score: float
    detail: dict[str, Any] = field(default_factory=dict)


class Router(ABC):
    name: ClassVar[str]

    needs_features: ClassVar[bool] = False

    @classmethod
    def create(cls, **deps: Any) -> Router:
        return cls()

    @abstractmethod
    def rank(self, request: RouteRequest, candidates: list[Candidate]) -> list[Ranked]:
        """Best first. Unhealthy candidates may be kept at the end as a last resort."""


class CheapestRouter(Router):
    """Cheapest healthy member first (blended price: input plus output per 1M tokens)."""

    name = "cheapest"

    def rank(self, request: RouteRequest, candidates: list[Candidate]) -> list[Ranked]:
        ordered = sorted(
            candidates, key=lambda c: (not c.healthy, c.input_per_1m + c.output_per_1m, c.name)
        )
        return [
            Ranked(c.name, -(c.input_per_1m + c.output_per_1m), {"healthy": c.healthy})
            for c in ordered
        ]
