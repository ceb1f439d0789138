"""Fit the per-model quality predictors and ship the best as the bandit's prior.

    python -m train.quality_fit --data ../shared/data

For each data family (`routing.quality_data.FAMILIES`) a grouped split keeps HOLDOUT of the
prompts (grouped by prompt text) out of training; every predictor kind is fitted on the rest
and scored on them (AUC, log loss, Brier, calibration). The kind with the lowest held-out log
loss, averaged over families by rows, is written to routing/artifacts/quality_predictor.npz
(plain arrays, one prefix per family) and quality_predictor.json (models, parameters,
held-out metrics, per-model sigma/noise/mean/ceiling, the params->quality curve); it is the
one fitted on the training part only, so the held-out figures describe what ships. The
regularisation of every kind is chosen on the training part alone by inner grouped
cross-validation (`tune_params`)."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from routing.outcomes import MODEL_ACTIVE_PARAMS_B
from routing.quality_data import FAMILIES, QualityData, load_family
from routing.quality_predictors import KINDS, auc, calibration, fit_predictor
from routing.quality_prior import META, NPZ

log = logging.getLogger(__name__)

HOLDOUT = 0.2
# Starting points; all regularised hard: ~2,000 prompts against 404 inputs overfit quickly.
# Every kind has its strength chosen again on each training set by inner grouped
# cross-validation over TUNE_GRID (`tune_params`), so no held-out row picks it.
DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    "logreg": {"l2": 1500.0},
    "knn": {"k": 150, "shrink": 5.0},
    "mlp": {"hidden": 32, "epochs": 8, "weight_decay": 0.5},
    "mf": {"rank": 16, "epochs": 8, "weight_decay": 0.5},
}
TUNE_GRID: dict[str, list[dict[str, Any]]] = {
    "logreg": [{"l2": v} for v in (300.0, 1000.0, 3000.0, 10000.0)],
    "knn": [{"k": v, "shrink": 5.0} for v in (50, 100, 200, 400)],
    "mlp": [{"hidden": 32, "epochs": 8, "weight_decay": v} for v in (0.1, 0.5, 2.0)],
    "mf": [{"rank": 16, "epochs": 8, "weight_decay": v} for v in (0.1, 0.5, 2.0)],
}
INNER_FOLDS = 3


def log_loss(pred: np.ndarray, y: np.ndarray) -> float:
    return float(-np.mean(y * np.log(pred + 1e-6) + (1 - y) * np.log(1 - pred + 1e-6)))


def grouped_folds(groups: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Fold index per row, whole groups per fold."""
    ug = np.unique(groups)
    rng = np.random.default_rng(seed)
    of_group = dict(zip(rng.permutation(ug).tolist(), np.arange(len(ug)) % k, strict=True))
    return np.array([of_group[g] for g in groups.tolist()])


def tune_params(
    kind: str,
    X: np.ndarray,
    Y: np.ndarray,
    groups: np.ndarray,
    models: tuple[str, ...],
    seed: int = 0,
) -> tuple[dict[str, Any], dict[str, float]]:
    """The TUNE_GRID entry with the lowest inner grouped INNER_FOLDS-fold log loss on (X, Y)
    (the caller's training rows only), and every entry's loss; DEFAULT_PARAMS for kinds
    without a grid."""
    grid = TUNE_GRID.get(kind)
    if not grid:
        return dict(DEFAULT_PARAMS[kind]), {}
    fold = grouped_folds(groups, INNER_FOLDS, seed + 17)
    losses: dict[str, float] = {}
    best, best_loss = grid[0], math.inf
    for params in grid:
        pred = np.empty_like(Y, dtype=np.float64)
        for f in range(INNER_FOLDS):
            tr = fold != f
            p = fit_predictor(kind, X[tr], Y[tr], models, **params)
            pred[~tr] = p.predict(X[~tr])
        loss = log_loss(pred, Y)
        losses[json.dumps(params, sort_keys=True)] = round(loss, 6)
        if loss < best_loss:
            best, best_loss = params, loss
    return dict(best), losses


def grouped_split(groups: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Boolean mask of held-out rows: whole groups, about `fraction` of them."""
    ug = np.unique(groups)
    rng = np.random.default_rng(seed)
    held = set(rng.permutation(ug)[: int(round(len(ug) * fraction))].tolist())
    return np.array([g in held for g in groups.tolist()])


def scores(pred: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    aucs = [auc(pred[:, j], y[:, j]) for j in range(y.shape[1])]
    ll = log_loss(pred, y)
    cal = calibration(pred, y)
    valid = [a for a in aucs if a is not None]
    return {
        "auc_mean": float(np.mean(valid)) if valid else None,
        "log_loss": float(ll),
        "brier": float(np.mean((pred - y) ** 2)),
        "sigma_mean": float(cal.sigma.mean()),
    }


def size_curve(models: tuple[str, ...], mean_quality: np.ndarray) -> tuple[float, float] | None:
    pts = [
        (math.log(MODEL_ACTIVE_PARAMS_B[m]), q)
        for m, q in zip(models, mean_quality, strict=True)
        if m in MODEL_ACTIVE_PARAMS_B
    ]
    if len(pts) < 3:
        return None
    x, y = np.array(pts).T
    slope, a = np.polyfit(x, y, 1)
    return float(a), float(slope)


def fit_all(datas: list[QualityData], kinds: list[str]) -> dict[str, Any]:
    report: dict[str, Any] = {}
    for d in datas:
        held = grouped_split(d.groups, HOLDOUT)
        X, Y = d.inputs, d.quality
        per: dict[str, Any] = {}
        for kind in kinds:
            t0 = time.perf_counter()
            params, inner = tune_params(kind, X[~held], Y[~held], d.groups[~held], d.models)
            p = fit_predictor(kind, X[~held], Y[~held], d.models, **params)
            pred = p.predict(X[held])
            per[kind] = {
                "predictor": p,
                "heldout_pred": pred,
                "metrics": {
                    **scores(pred, Y[held]),
                    "fit_s": round(time.perf_counter() - t0, 2),
                    "inner_cv_log_loss": inner,
                },
            }
            log.info("%s %s: %s", d.family, kind, per[kind]["metrics"])
        report[d.family] = {"data": d, "held": held, "kinds": per}
    return report


def choose(report: dict[str, Any], kinds: list[str]) -> str:
    def loss(kind: str) -> float:
        tot = sum(int(r["held"].sum()) for r in report.values())
        return (
            sum(
                r["kinds"][kind]["metrics"]["log_loss"] * int(r["held"].sum())
                for r in report.values()
            )
            / tot
        )

    return min(kinds, key=loss)


def write(report: dict[str, Any], kind: str, npz: Path = NPZ, meta_path: Path = META) -> dict:
    arrays: dict[str, np.ndarray] = {}
    families: dict[str, Any] = {}
    curve = None
    layout = None
    for fam, r in report.items():
        d: QualityData = r["data"]
        held = r["held"]
        entry = r["kinds"][kind]
        p = entry["predictor"]
        cal = calibration(entry["heldout_pred"], d.quality[held])
        all_pred = p.predict(d.inputs)
        for k, v in p.arrays.items():
            arrays[f"{fam}/{k}"] = np.asarray(v)
        families[fam] = {
            "models": list(d.models),
            "params": p.params,
            "sigma": cal.sigma.round(6).tolist(),
            "noise": cal.noise.round(6).tolist(),
            "mean_quality": d.quality[~held].mean(axis=0).round(6).tolist(),
            "ceiling": np.percentile(all_pred, 99, axis=0).round(6).tolist(),
            "rows": {"train": int((~held).sum()), "heldout": int(held.sum())},
            "datasets": sorted(set(d.datasets)),
            "heldout": {k: v["metrics"] for k, v in r["kinds"].items()},
        }
        layout = d.layout
        if fam == "routerbench":
            curve = size_curve(d.models, d.quality[~held].mean(axis=0))
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    blob = buf.getvalue()
    npz.parent.mkdir(parents=True, exist_ok=True)
    npz.write_bytes(blob)
    meta = {
        "format": 1,
        "kind": kind,
        "fingerprint": hashlib.sha256(blob).hexdigest()[:12],
        "input": {"layout": layout, "what": "[MiniLM embedding (384), context vector]"},
        "holdout": {"fraction": HOLDOUT, "grouping": "prompt text", "seed": 0},
        "chosen_by": "lowest held-out log loss, averaged over families by rows",
        "size_curve": curve,
        "families": families,
    }
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    ap.add_argument("--ship", choices=list(KINDS), help="ship this kind instead of the best")
    args = ap.parse_args(argv)
    if not args.data.exists():
        print(f"quality_fit: no data at {args.data}", file=sys.stderr)
        return 2
    datas = [load_family(args.data, f) for f in args.families]
    report = fit_all(datas, args.kinds)
    kind = args.ship or choose(report, args.kinds)
    meta = write(report, kind)
    for fam, info in meta["families"].items():
        for k, m in info["heldout"].items():
            print(
                f"{fam:<12} {k:<7} held-out AUC {m['auc_mean']:.4f} log loss "
                f"{m['log_loss']:.4f} Brier {m['brier']:.4f} calibration sigma "
                f"{m['sigma_mean']:.3f}{'  <- shipped' if k == kind else ''}"
            )
    print(
        f"wrote {NPZ} ({NPZ.stat().st_size} bytes) and {META}; kind {kind}, "
        f"fingerprint {meta['fingerprint']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
