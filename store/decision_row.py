"""The decision row as the request path fills it: one typed record per request, with the
columns of `store.schema.Decision`, turned into the dict the decision log writes only when
the request is over (`as_row`)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any


@dataclass(slots=True)
class DecisionRow:
    """Who asked, what, which member served it, why, and what it cost. Field names are the
    `decisions` table's columns (tests/test_decision_row.py keeps the two equal)."""

    id: str
    endpoint: str
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    key_id: int | None = None
    key_prefix: str | None = None
    team: str | None = None
    requested_model: str | None = None
    served_member: str | None = None
    upstream_model: str | None = None
    route_reason: str | None = None
    candidates: list[dict[str, Any]] | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)
    features: dict[str, Any] | None = None
    stream: bool = False
    status: int = 0  # 0 until the request ends; 499 when the client left first
    error: str | None = None
    latency_ms: float | None = None
    ttft_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    usage_source: str | None = None  # upstream | counted:tiktoken | cache
    cost_usd: float | None = None  # None: no known price (unknown, never 0)
    energy_j: float | None = None  # None: no energy figure
    energy_source: str | None = None  # says whether it was measured or estimated
    cache_hit: bool = False
    gco2e: float | None = None
    counterfactual_member: str | None = None
    counterfactual_cost_usd: float | None = None
    counterfactual_energy_j: float | None = None
    speculative: dict[str, Any] | None = None
    replicas: dict[str, Any] | None = None  # the replicas a multi-endpoint member ran on

    def as_row(self) -> dict[str, Any]:
        """The dict the decision log queues, journals and inserts (one key per column)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}
