"""Energy estimate for what greengate cannot meter: joules per output token as a power law of
active parameters and batch size, fitted on measured ML.ENERGY leaderboard data
(ml-energy/leaderboard, vLLM on H100/B200; ../shared/data/mlenergy/llm_energy_per_token.csv).

    log(J/token) = c0 + c1*log(active_params_b) + c2*log(total_params_b) + c3*log(batch)

The shipped coefficients live in telemetry/artifacts/energy_fit.json with the fit's held-out
error; `python -m telemetry.estimator --data CSV` refits them."""

from __future__ import annotations

import argparse
import csv
import json
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

ARTIFACT = Path(__file__).parent / "artifacts" / "energy_fit.json"
METHOD = "mlenergy-powerlaw"
DEFAULT_BATCH = 16.0  # a busy shared server; the fit covers batch 1 to ~1000


@dataclass(frozen=True)
class EnergyFit:
    coef: tuple[float, float, float, float]
    heldout_median_rel_error: float
    rows: int

    def j_per_output_token(
        self, active_params_b: float, total_params_b: float | None = None,
        batch: float = DEFAULT_BATCH,
    ) -> float:
        total = total_params_b or active_params_b
        c0, c1, c2, c3 = self.coef
        return math.exp(c0 + c1 * math.log(active_params_b) + c2 * math.log(total)
                        + c3 * math.log(max(batch, 1.0)))


def _design(rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    a = np.array([float(r["active_params_b"]) for r in rows])
    t = np.array([float(r["total_params_b"]) for r in rows])
    b = np.array([max(float(r["avg_batch_size"]), 1.0) for r in rows])
    y = np.log(np.array([float(r["energy_per_token_joules"]) for r in rows]))
    return np.c_[np.ones(len(a)), np.log(a), np.log(t), np.log(b)], y


def fit(csv_path: Path, seed: int = 0) -> EnergyFit:
    """Fit on 80% of the models, report the median relative error on the other 20% (split by
    model, so a model's own rows never help predict it), then refit on everything."""
    rows = [r for r in csv.DictReader(csv_path.open()) if r.get("energy_per_token_joules")]
    models = sorted({r["model_id"] for r in rows})
    rng = np.random.default_rng(seed)
    held = set(rng.choice(models, size=max(1, len(models) // 5), replace=False))
    train = [r for r in rows if r["model_id"] not in held]
    test = [r for r in rows if r["model_id"] in held]
    X, y = _design(train)
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    Xt, yt = _design(test)
    err = float(np.median(np.abs(np.exp(Xt @ coef - yt) - 1.0)))
    X_all, y_all = _design(rows)
    coef_all, *_ = np.linalg.lstsq(X_all, y_all, rcond=None)
    return EnergyFit(tuple(float(c) for c in coef_all), err, len(rows))  # type: ignore[arg-type]


@cache
def shipped_fit() -> EnergyFit:
    d = json.loads(ARTIFACT.read_text())
    return EnergyFit(tuple(d["coef"]), d["heldout_median_rel_error"], d["rows"])  # type: ignore[arg-type]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", type=Path,
                   default=Path("../shared/data/mlenergy/llm_energy_per_token.csv"))
    p.add_argument("--out", type=Path, default=ARTIFACT)
    args = p.parse_args()
    f = fit(args.data)
    args.out.write_text(json.dumps({
        "method": METHOD, "coef": f.coef, "heldout_median_rel_error": f.heldout_median_rel_error,
        "rows": f.rows, "source": "ML.ENERGY leaderboard (ml-energy/leaderboard @0cd52dab)",
    }, indent=2) + "\n")
    print(json.dumps({"coef": f.coef, "heldout_median_rel_error": f.heldout_median_rel_error}))


if __name__ == "__main__":
    main()
