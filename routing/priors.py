"""Warm-start priors: per-model ridge statistics of quality on the query context, fitted on
public per-query outcomes, so the bandit does not spend its first hundreds of requests
exploring what is already known. Online feedback keeps moving them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from bandits import ArmPrior, fit_prior
from routing.outcomes import Outcome

SHIPPED = Path(__file__).parent / "artifacts" / "priors.json"
# A prior counts as at most this many online observations, so feedback can overrule it.
PRIOR_WEIGHT_CAP = 50.0


def fit_priors(outcomes: list[Outcome], contexts: np.ndarray, layout: str,
               ridge: float = 1.0) -> dict[str, Any]:
    models = sorted({m for o in outcomes for m in o.quality})
    out: dict[str, Any] = {"dim": int(contexts.shape[1]), "layout": layout, "models": {}}
    for m in models:
        idx = [i for i, o in enumerate(outcomes) if m in o.quality]
        X = contexts[idx]
        r = np.array([outcomes[i].quality[m] for i in idx])
        weight = min(1.0, PRIOR_WEIGHT_CAP / max(len(idx), 1))
        p = fit_prior(X, r, ridge=ridge, weight=weight)
        out["models"][m] = {"A": p.A.tolist(), "b": p.b.tolist(), "n": len(idx),
                            "weight": weight, "mean_quality": float(r.mean())}
    return out


def save_priors(priors: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(priors, separators=(",", ":")))


def load_priors(path: Path | None, dim: int, layout: str) -> dict[str, ArmPrior]:
    """Priors by model name; empty when the file is missing or was fitted on other features."""
    path = path or SHIPPED
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    if data.get("dim") != dim or data.get("layout") != layout:
        return {}
    return {m: ArmPrior(A=np.asarray(v["A"]), b=np.asarray(v["b"]), n=int(v["n"]))
            for m, v in data["models"].items()}
