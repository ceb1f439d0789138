"""Bandit decision cost: microseconds per select (and per update) at 12 arms, d=32.

Each bandit of `bandits/` (rank-one inverse updates, cached Thompson factors) against an anchor
that does what a textbook LinUCB does per select: `np.linalg.solve` on each arm's A for theta
and the bonus. Steady state as in serving: every select is followed by one update. Candidates
are interleaved decision by decision; medians and ratios to the anchor.
(The behaviour this rests on, no refactorisation but the updated arm's, is tested in
tests/test_bandits.py; this file holds the timings that used to be asserted there.)

    .venv/bin/python bench/bandit_select.py --out bench/results/bandit_select.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from bandits import BANDITS, make_bandit


class NaiveLinUCB:
    """Per-arm A and b, solved from scratch at every select (O(k d^3))."""

    def __init__(self, dim: int, alpha: float = 1.0) -> None:
        self.dim, self.alpha = dim, alpha
        self.a: dict[str, np.ndarray] = {}
        self.b: dict[str, np.ndarray] = {}

    def choose(self, x: np.ndarray, arms: list[str]) -> str:
        best, best_score = arms[0], -np.inf
        for arm in arms:
            a = self.a.setdefault(arm, np.eye(self.dim))
            b = self.b.setdefault(arm, np.zeros(self.dim))
            theta = np.linalg.solve(a, b)
            score = theta @ x + self.alpha * np.sqrt(x @ np.linalg.solve(a, x))
            if score > best_score:
                best, best_score = arm, score
        return best

    def update(self, x: np.ndarray, arm: str, reward: float) -> None:
        self.a[arm] += np.outer(x, x)
        self.b[arm] += reward * x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--arms", type=int, default=12)
    ap.add_argument("--decisions", type=int, default=2000)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    arms = [f"model-{i}" for i in range(args.arms)]
    X = rng.standard_normal((args.decisions + 200, args.dim))
    R = rng.random(len(X))
    cands: dict[str, Any] = {a: make_bandit(a, args.dim, seed=0) for a in sorted(BANDITS)}
    cands["naive_linucb"] = NaiveLinUCB(args.dim)
    for b in cands.values():  # warm state
        for x, r in zip(X[:200], R[:200], strict=True):
            b.update(x, b.choose(x, arms), float(r))
    sel: dict[str, list[float]] = {n: [] for n in cands}
    upd: dict[str, list[float]] = {n: [] for n in cands}
    names = list(cands)
    for i, (x, r) in enumerate(zip(X[200:], R[200:], strict=True)):
        for k in range(len(names)):
            name = names[(i + k) % len(names)]
            b = cands[name]
            t0 = time.perf_counter()
            arm = b.choose(x, arms)
            t1 = time.perf_counter()
            b.update(x, arm, float(r))
            t2 = time.perf_counter()
            sel[name].append((t1 - t0) * 1e6)
            upd[name].append((t2 - t1) * 1e6)
    med = {n: statistics.median(v) for n, v in sel.items()}
    res = {
        "dim": args.dim, "arms": args.arms, "decisions": args.decisions,
        "select_us_p50": {n: round(v, 1) for n, v in med.items()},
        "select_us_p99": {n: round(float(np.percentile(v, 99)), 1) for n, v in sel.items()},
        "update_us_p50": {n: round(statistics.median(v), 1) for n, v in upd.items()},
        "select_speedup_vs_naive": {n: round(med["naive_linucb"] / v, 1) for n, v in med.items()},
    }
    print(json.dumps(res, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
