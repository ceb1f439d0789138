"""Dollar cost of a call, from the member's declared prices or litellm's price map."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path


@dataclass(frozen=True)
class Prices:
    input_per_1m: float
    output_per_1m: float
    source: str  # "config" or "litellm-cost-map"

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_1m + completion_tokens * self.output_per_1m) / 1e6


@cache
def _litellm_cost_map() -> dict:
    # Read litellm's bundled price file directly: importing litellm costs seconds at start-up.
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return {}
    path = Path(next(iter(spec.submodule_search_locations))) / (
        "model_prices_and_context_window_backup.json"
    )
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def litellm_prices(model: str) -> Prices | None:
    """Prices litellm knows for `model` (with or without a provider/ prefix)."""
    table = _litellm_cost_map()
    for name in (model, model.split("/", 1)[-1]):
        entry = table.get(name)
        if entry and "input_cost_per_token" in entry:
            return Prices(
                input_per_1m=float(entry["input_cost_per_token"]) * 1e6,
                output_per_1m=float(entry.get("output_cost_per_token", 0.0)) * 1e6,
                source="litellm-cost-map",
            )
    return None


def litellm_context_window(model: str) -> int | None:
    table = _litellm_cost_map()
    for name in (model, model.split("/", 1)[-1]):
        entry = table.get(name)
        if entry and entry.get("max_input_tokens"):
            return int(entry["max_input_tokens"])
    return None
