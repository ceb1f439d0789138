"""Semantic cache: threshold choice on labelled paraphrase pairs, and lookup latency.

Quality: on Quora Question Pairs as shipped by GPTCache (../shared/data/paraphrase/, a JSON
list of {text_a, text_b, label}; label 1 = duplicate) or any such list (`--pairs`), both texts
are embedded with the gateway's MiniLM (`routing.embedder.Embedder`) and the cosine of each
pair computed. Serving text_b the answer cached for text_a is a semantic hit when the cosine
is >= the threshold and, with the numbers guard that `routing.cache.context_hash` applies,
both texts contain the same numbers. Per threshold: recall (share of duplicates served),
precision (share of served pairs that are duplicates) and the wrong-hit rate (share of
non-duplicates served). The chosen threshold is the lowest on a 0.005 grid whose wrong-hit
rate is under `--max-wrong` (1%) with 95% confidence (upper end of the Wilson interval);
the lowest whose observed rate is under it is reported too.

Latency: `SemanticCache.lookup` p50/p99 with 10k and 100k entries in one team and one context
(every row is a candidate: the worst case), for MemoryStore and, at 10k, RedisStore;
semantic hits, exact hits and misses. Entry embeddings are the evaluation's MiniLM vectors
(plus perturbed copies beyond those), queries are stored vectors with noise (cosine ~0.98).

Pair verifier (routing/cache/verifier.py; the default since it was trained): the QQP pairs
it never saw (its held-out test part: no question of them was trained on or used to pick a
threshold; `train.cache_verifier.split_pairs`), scored with the shipped verifier. Per mode
(strict / balanced, the default): recall and wrong hits per pair (the headline); beside them,
in the same run, cosine alone at the old 0.97 and at the lowest cosine threshold whose
wrong-hit rate on these same pairs is no higher than the balanced mode's (the anchor); the
recall / wrong-hit curve over the verifier threshold at the balanced floor, default marked;
the CPU time of one decision. Then a workload-style figure (`workload`): each held-out
question looked up against a cache of all the others, wrong hits counted per lookup.
`--vectors FILE` reuses the embeddings `train.cache_verifier --vectors` keeps.

    .venv/bin/python bench/cache_eval.py --out bench/results/cache_eval.json \
        --png bench/results/cache_eval.png
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import random
import sys
import tarfile
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_DATA = REPO.parent / "shared" / "data" / "paraphrase" / "gptcache_qqp_full.tar.gz"
GRID = np.round(np.arange(0.50, 1.0001, 0.005), 3)


def load_pairs(path: Path) -> list[dict[str, Any]]:
    """The pairs of a JSON list file, or of the JSON member of a tar.gz (extracted to a
    temporary directory)."""
    if path.name.endswith((".tar.gz", ".tgz")):
        with tempfile.TemporaryDirectory() as tmp, tarfile.open(path) as tar:
            members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(".json")]
            if not members:
                raise SystemExit(f"{path}: no JSON member")
            tar.extractall(tmp, members=members, filter="data")
            return json.loads((Path(tmp) / members[0].name).read_text())
    return json.loads(path.read_text())


def embed_pairs(pairs: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, float]:
    """(embeddings of text_a, of text_b, ms per text); each distinct text is embedded once."""
    from routing.embedder import Embedder

    texts = list(dict.fromkeys(t for p in pairs for t in (p["text_a"], p["text_b"])))
    emb = Embedder().load()
    out = np.zeros((len(texts), 384), dtype=np.float32)
    started = time.perf_counter()
    step = 1024
    for i in range(0, len(texts), step):
        out[i : i + step] = emb.encode(texts[i : i + step])
        done = min(i + step, len(texts))
        rate = (time.perf_counter() - started) / done
        print(
            f"\r  embedded {done}/{len(texts)} ({rate * 1000:.1f} ms/text)",
            end="",
            file=sys.stderr,
            flush=True,
        )
    print(file=sys.stderr)
    ms_per_text = (time.perf_counter() - started) / max(1, len(texts)) * 1000
    emb.close()
    row = {t: i for i, t in enumerate(texts)}
    a = out[[row[p["text_a"]] for p in pairs]]
    b = out[[row[p["text_b"]] for p in pairs]]
    return a, b, ms_per_text


def wilson_upper(k: int, n: int, z: float = 1.96) -> float:
    """Upper end of the 95% Wilson interval of a rate k/n."""
    if n == 0:
        return 1.0
    p = k / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre + spread) / (1 + z * z / n)


def curve(cos: np.ndarray, labels: np.ndarray, allowed: np.ndarray) -> list[dict[str, float]]:
    pos, neg = labels == 1, labels == 0
    rows = []
    for t in GRID:
        served = (cos >= t - 1e-9) & allowed
        tp, fp = int((served & pos).sum()), int((served & neg).sum())
        rows.append(
            {
                "threshold": float(t),
                "served": int(served.sum()),
                "precision": tp / (tp + fp) if tp + fp else 1.0,
                "recall": tp / int(pos.sum()) if pos.any() else 0.0,
                "wrong_hit_rate": fp / int(neg.sum()) if neg.any() else 0.0,
                "wrong_hits": fp,
            }
        )
    return rows


def choose(
    rows: list[dict[str, float]], n_neg: int, max_wrong: float, *, confident: bool = True
) -> dict[str, float]:
    """The lowest threshold whose wrong-hit rate is under `max_wrong`: with `confident`, the
    upper end of its 95% interval must be (a sample of 10-20k pairs leaves ~0.2 points of
    doubt); otherwise the observed rate."""
    rows = [dict(r, wrong_hit_rate_upper95=wilson_upper(int(r["wrong_hits"]), n_neg)) for r in rows]
    key = "wrong_hit_rate_upper95" if confident else "wrong_hit_rate"
    ok = [r for r in rows if r[key] < max_wrong]
    # none qualifies on a small sample (an upper bound needs enough non-duplicates)
    return min(ok, key=lambda r: r["threshold"]) if ok else dict(rows[-1], none_qualified=True)


def quality(pairs: list[dict[str, Any]], max_wrong: float) -> dict[str, Any]:
    from routing.cache import DEFAULT_THRESHOLD, numbers_signature

    labels = np.array([int(p["label"]) for p in pairs])
    started = time.perf_counter()
    a, b, ms_per_text = embed_pairs(pairs)
    embed_s = time.perf_counter() - started
    cos = np.einsum("ij,ij->i", a, b)
    same_numbers = np.array(
        [numbers_signature(p["text_a"]) == numbers_signature(p["text_b"]) for p in pairs]
    )
    everything = np.ones_like(same_numbers)
    guarded = curve(cos, labels, same_numbers)
    unguarded = curve(cos, labels, everything)
    n_neg = int((labels == 0).sum())
    at_default = min(guarded, key=lambda r: abs(r["threshold"] - DEFAULT_THRESHOLD))
    at_default = dict(
        at_default, wrong_hit_rate_upper95=wilson_upper(at_default["wrong_hits"], n_neg)
    )
    return {
        "pairs": len(pairs),
        "duplicates": int(labels.sum()),
        "non_duplicates": n_neg,
        "pairs_with_different_numbers": int((~same_numbers).sum()),
        "embed_s": round(embed_s, 1),
        "embed_ms_per_text": round(ms_per_text, 2),
        "cosine_mean": {
            "duplicates": float(cos[labels == 1].mean()) if (labels == 1).any() else None,
            "non_duplicates": float(cos[labels == 0].mean()) if n_neg else None,
        },
        "max_wrong_hit_rate": max_wrong,
        "chosen": choose(guarded, n_neg, max_wrong),
        "chosen_observed_rate": choose(guarded, n_neg, max_wrong, confident=False),
        "chosen_without_numbers_guard": choose(unguarded, n_neg, max_wrong),
        "current_default": at_default,
        "curve": guarded,
        "curve_without_numbers_guard": unguarded,
        "_vectors": np.concatenate([a, b]),  # reused as realistic entries for the latency part
    }


def verifier_quality(
    source: Path, seed: int = 0, max_pairs: int = 30_000, vectors: Path | None = None
) -> dict[str, Any]:
    from routing.cache.verifier import PairVerifier
    from train.cache_verifier import embed, rates, split_pairs

    ver = PairVerifier.load()
    test = split_pairs(load_pairs(source), seed, max_pairs)["test"]
    vec = embed([t for p in test for t in (p["text_a"], p["text_b"])], vectors)
    y = np.array([int(p["label"]) for p in test])
    # text_b is the new question, text_a the cached one (as in training)
    va = np.stack([vec[p["text_b"]] for p in test])
    vb = np.stack([vec[p["text_a"]] for p in test])
    cos = np.einsum("ij,ij->i", va, vb)
    pairs = [(p["text_b"], p["text_a"]) for p in test]
    t0 = time.process_time()
    score = ver.score_many(pairs, cos, va, vb)
    cpu_us = (time.process_time() - t0) / max(len(test), 1) * 1e6
    out: dict[str, Any] = {
        "pairs": len(test),
        "duplicates": int(y.sum()),
        "verifier": ver.meta.get("task"),
        "verifier_cpu_us_per_pair_batched": round(cpu_us, 1),
        "modes": {},
    }
    for mode, rule in ver.modes.items():
        hit = (cos >= rule.cosine_floor) & ((score >= rule.threshold) | (rule.threshold <= 0))
        out["modes"][mode] = {
            "cosine_floor": rule.cosine_floor,
            "threshold": rule.threshold,
            **rates(hit, y),
        }
    single_wall, c0 = [], time.process_time()
    for i in range(min(500, len(test))):  # what one lookup pays: one decision, no batching
        w0 = time.perf_counter()
        ver.decide("balanced", pairs[i][0], pairs[i][1], max(float(cos[i]), 0.999), va[i], vb[i])
        single_wall.append((time.perf_counter() - w0) * 1000)
    out["single_decision"] = {
        "cpu_us_mean": round((time.process_time() - c0) / max(1, len(single_wall)) * 1e6, 1),
        "wall_ms_p50": round(float(np.median(single_wall)), 3),
        "wall_ms_p99": round(float(np.quantile(single_wall, 0.99)), 3),
    }
    out["cosine_only_0.97"] = rates(cos >= 0.97, y)
    bal = out["modes"]["balanced"]
    same_wrong = None
    for t in GRID:
        r = rates(cos >= t, y)
        if r["wrong_hit_rate"] <= bal["wrong_hit_rate"]:
            same_wrong = {"threshold": float(t), **r}
            break
    out["cosine_only_at_balanced_wrong_rate"] = same_wrong
    if same_wrong and same_wrong["recall"]:
        out["recall_ratio_balanced_vs_cosine_same_wrong"] = round(
            bal["recall"] / same_wrong["recall"], 2
        )
    rule = ver.modes["balanced"]
    grid = sorted(set(np.round(np.arange(0.05, 1.0, 0.05), 3).tolist()) | {rule.threshold})
    out["curve"] = [
        {
            "threshold": float(t),
            "default": bool(abs(t - rule.threshold) < 1e-9),
            **{
                k: v
                for k, v in rates((cos >= rule.cosine_floor) & (score >= t), y).items()
                if k in ("recall", "wrong_hit_rate")
            },
        }
        for t in grid
    ]
    out["workload"] = workload(test, vec, ver)
    return out


def duplicate_clusters(pairs: list[dict[str, Any]]) -> dict[str, str]:
    """question -> a representative of its paraphrase cluster (duplicate labels, transitive)."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for p in pairs:
        ra, rb = find(p["text_a"]), find(p["text_b"])
        if int(p["label"]) == 1 and ra != rb:
            parent[ra] = rb
    return {q: find(q) for q in parent}


def workload(test: list[dict[str, Any]], vec: dict[str, np.ndarray], ver: Any) -> dict[str, Any]:
    """Per lookup, as the cache runs: every held-out question is looked up against a cache
    holding all the other held-out questions (one context per numbers signature, as the
    context hash keeps them apart); the most similar entry is the candidate and the mode's
    rule decides. A hit is right when the entry is in the question's paraphrase cluster
    (QQP duplicate labels, closed transitively), wrong when QQP labels the two questions
    non-duplicates, and unknown when QQP never paired them (read by hand, most such hits
    are paraphrases QQP did not pair; they are reported apart, not counted either way)."""
    from routing.cache import numbers_signature

    clusters = duplicate_clusters(test)
    qs = list(clusters)
    x = np.stack([vec[q] for q in qs]).astype(np.float32)
    sig = np.array([hash(tuple(numbers_signature(q))) for q in qs])
    cid = np.array([hash(clusters[q]) for q in qs])
    size = {c: int((cid == c).sum()) for c in set(cid.tolist())}
    has_para = np.array([size[c] > 1 for c in cid.tolist()])
    nn = np.zeros(len(qs), dtype=np.int64)
    ncos = np.zeros(len(qs), dtype=np.float32)
    for i in range(0, len(qs), 1024):  # blocks: the full similarity matrix would be ~300 MB
        s = x[i : i + 1024] @ x.T
        s[sig[i : i + 1024, None] != sig[None, :]] = -2.0
        s[np.arange(len(s)), np.arange(i, i + len(s))] = -2.0  # not itself
        nn[i : i + 1024] = s.argmax(1)
        ncos[i : i + 1024] = s[np.arange(len(s)), nn[i : i + 1024]]
    right = cid[nn] == cid
    labelled_neg = {frozenset((p["text_a"], p["text_b"])) for p in test if int(p["label"]) == 0}
    pairs = [(qs[i], qs[nn[i]]) for i in range(len(qs))]
    score = ver.score_many(pairs, ncos, x, x[nn])
    out: dict[str, Any] = {
        "lookups": len(qs),
        "lookups_with_a_paraphrase_cached": int(has_para.sum()),
        "nearest_entry_is_a_paraphrase": int(right.sum()),
        "rules": {},
    }
    rules = {m: (r.cosine_floor, r.threshold) for m, r in ver.modes.items()}
    rules["cosine_only_0.97"] = (0.97, 0.0)
    known = np.array([frozenset(pairs[i]) in labelled_neg for i in range(len(qs))])
    for name, (floor, thr) in rules.items():
        hit = (ncos >= floor) & ((score >= thr) | (thr <= 0))
        wrong, unknown = hit & ~right & known, hit & ~right & ~known
        out["rules"][name] = {
            "recall": round(float((hit & right).sum() / max(1, has_para.sum())), 4),
            "hits": int(hit.sum()),
            "right": int((hit & right).sum()),
            "wrong_hits_per_lookup": round(float(wrong.sum() / len(qs)), 5),
            "wrong_hits_per_lookup_upper95": round(wilson_upper(int(wrong.sum()), len(qs)), 5),
            "wrong_hits": int(wrong.sum()),
            "unknown_hits": int(unknown.sum()),
            "unknown_hits_per_lookup": round(float(unknown.sum() / len(qs)), 5),
        }
    return out


# -- latency ----------------------------------------------------------------------------------


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _entries(base: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n realistic embeddings: the evaluation's vectors, then perturbed copies of them."""
    if len(base) >= n:
        return base[rng.permutation(len(base))[:n]]
    extra = base[rng.integers(0, len(base), n - len(base))]
    extra = _unit(extra + 0.04 * rng.standard_normal(extra.shape).astype(np.float32))
    return np.concatenate([base, extra])


def _pct(xs: list[float]) -> dict[str, float]:
    arr = np.array(xs) * 1000
    return {"p50_ms": float(np.percentile(arr, 50)), "p99_ms": float(np.percentile(arr, 99))}


def latency(
    store_name: str,
    n: int,
    base: np.ndarray,
    lookups: int,
    redis_url: str,
    threshold: float,
) -> dict[str, Any]:
    from routing.cache import CacheKey, MemoryStore, RedisStore, SemanticCache, context_hash

    rng = np.random.default_rng(n)
    vecs = _entries(base, n, rng)
    prefix = f"gg-bench-cache:{uuid.uuid4().hex}"
    store = MemoryStore() if store_name == "memory" else RedisStore(redis_url, prefix=prefix)
    cache = SemanticCache(store, threshold=threshold, max_entries_per_team=n)
    team = "bench"
    ctx = context_hash({"model": "auto", "messages": [{"role": "user", "content": "q"}]})
    response = {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 0,
        "model": "bench",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "An answer of ordinary size. " * 20},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 20, "completion_tokens": 120, "total_tokens": 140},
    }

    def key(i: int | str, v: np.ndarray | None) -> CacheKey:
        return CacheKey(team, hashlib.sha256(str(i).encode()).hexdigest(), ctx, v, None)

    try:
        started = time.perf_counter()
        for i in range(n):
            cache.put(key(i, vecs[i]), response, "bench")
        fill_s = time.perf_counter() - started
        out: dict[str, Any] = {"store": store_name, "entries": n, "fill_s": round(fill_s, 2)}
        if isinstance(store, RedisStore):  # first lookup of a replica loads the team's index
            t0 = time.perf_counter()
            cache.lookup(key("cold", _unit(rng.standard_normal(384))))
            out["cold_sync_ms"] = round((time.perf_counter() - t0) * 1000, 1)
        picks = rng.integers(0, n, lookups)
        noise = 0.012 * rng.standard_normal((lookups, 384)).astype(np.float32)
        queries = _unit(vecs[picks] + noise)
        kinds: dict[str, list[float]] = {"semantic_hit": [], "exact_hit": [], "miss": []}
        wrong_kind = 0
        for j in range(lookups):
            for kind, k in (
                ("semantic_hit", key(f"q{j}", queries[j])),
                ("exact_hit", key(int(picks[j]), vecs[picks[j]])),
                ("miss", key(f"m{j}", _unit(rng.standard_normal(384)))),
            ):
                t0 = time.perf_counter()
                hit = cache.lookup(k)
                kinds[kind].append(time.perf_counter() - t0)
                got = None if hit is None else hit.kind + "_hit"
                wrong_kind += got != (None if kind == "miss" else kind)
        for kind, xs in kinds.items():
            out[kind] = _pct(xs)
        out["unexpected_outcomes"] = wrong_kind
        if isinstance(store, RedisStore):
            # Another replica writes before each lookup: the mirror catches up incrementally.
            replica = RedisStore(redis_url, prefix=prefix)
            other = SemanticCache(replica, threshold=threshold, max_entries_per_team=n)
            xs = []
            for j in range(min(lookups, 200)):
                other.put(key(f"o{j}", queries[j]), response, "bench")
                t0 = time.perf_counter()
                cache.lookup(key(f"p{j}", queries[j]))
                xs.append(time.perf_counter() - t0)
            out["semantic_hit_after_foreign_put"] = _pct(xs)
            out["full_syncs"] = store.full_syncs
            other.store.close()
        return out
    finally:
        if isinstance(store, RedisStore):
            store.delete_team(team)
            store._r.delete(*store._r.keys(f"{prefix}:*") or ["-"])
            store.close()


# -- report -----------------------------------------------------------------------------------


def plot(q: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7.5, 7), sharex=True)
    for rows, style, tag in (
        (q["curve"], "-", ""),
        (q["curve_without_numbers_guard"], ":", " (no numbers guard)"),
    ):
        t = [r["threshold"] for r in rows]
        ax1.plot(t, [r["precision"] for r in rows], "C0" + style, label="precision" + tag)
        ax1.plot(t, [r["recall"] for r in rows], "C1" + style, label="recall" + tag)
        wrong = [max(r["wrong_hit_rate"], 1e-5) for r in rows]
        ax2.plot(t, wrong, "C3" + style, label="wrong-hit rate" + tag)
    c = q["chosen"]
    chosen = c["threshold"]
    for ax in (ax1, ax2):
        ax.axvline(chosen, color="grey", ls="--", lw=1)
        ax.grid(alpha=0.3)
    ax2.axhline(q["max_wrong_hit_rate"], color="k", lw=0.8)
    ax2.set_yscale("log")
    ax1.set_ylabel("share")
    ax2.set_ylabel("non-duplicates served")
    ax2.set_xlabel("cosine threshold (MiniLM, last user turn)")
    ax1.set_title(
        f"Semantic cache on {q['pairs']:,} labelled pairs: threshold {chosen:.3f} serves "
        f"{c['wrong_hit_rate']:.2%} of non-duplicates,\nrecall {c['recall']:.1%} (grey line)",
        fontsize=10,
    )
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=Path, help="JSON list of {text_a, text_b, label}")
    ap.add_argument("--sample", type=int, default=10_000, help="pairs to use (0: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-wrong", type=float, default=0.01)
    ap.add_argument("--sizes", default="10000,100000", help="entries per team for latency")
    ap.add_argument("--lookups", type=int, default=300, help="lookups of each kind per size")
    default_redis = os.environ.get("GREENGATE_REDIS_URL", "redis://127.0.0.1:6379/0")
    ap.add_argument("--redis-url", default=default_redis)
    ap.add_argument("--redis-sizes", default="10000", help="sizes also run on RedisStore")
    ap.add_argument("--png", type=Path)
    ap.add_argument("--verifier-only", action="store_true", help="skip the cosine sweep/latency")
    ap.add_argument("--vectors", type=Path, help="embedding cache of train.cache_verifier")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)

    source = args.pairs or DEFAULT_DATA
    if not source.exists():
        print(f"no pair data at {source}: pass --pairs FILE", file=sys.stderr)
        return 2
    ver = verifier_quality(source, args.seed, vectors=args.vectors)
    print(f"pair verifier ({ver['verifier']}) on {ver['pairs']:,} never-trained QQP pairs:")
    for name, r in [
        *ver["modes"].items(),
        ("cosine >= 0.97", ver["cosine_only_0.97"]),
        ("cosine, same wrong-hit rate", ver["cosine_only_at_balanced_wrong_rate"]),
    ]:
        if r:
            print(
                f"  {name:28s} recall {r['recall']:.1%}  wrong hits {r['wrong_hit_rate']:.2%} "
                f"(upper95 {r['wrong_hit_upper95']:.2%})"
            )
    d = ver["single_decision"]
    print(
        f"  one decision: {d['cpu_us_mean']:.0f} us CPU, p50 {d['wall_ms_p50']:.3f} ms, "
        f"p99 {d['wall_ms_p99']:.3f} ms"
    )
    w = ver["workload"]
    print(
        f"per lookup ({w['lookups']:,} held-out questions, each against a cache of the others; "
        f"{w['lookups_with_a_paraphrase_cached']:,} have a paraphrase cached):"
    )
    for name, r in w["rules"].items():
        print(
            f"  {name:28s} recall {r['recall']:.1%}  wrong hits per lookup "
            f"{r['wrong_hits_per_lookup']:.2%} (upper95 {r['wrong_hits_per_lookup_upper95']:.2%}"
            f"); unlabelled pairs served {r['unknown_hits_per_lookup']:.2%}"
        )
    if args.verifier_only:
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({"verifier": ver}, indent=1))
        return 0
    pairs = load_pairs(source)
    total = len(pairs)
    if args.sample and args.sample < total:
        pairs = random.Random(args.seed).sample(pairs, args.sample)
    print(f"{len(pairs):,} of {total:,} pairs from {source.name} (seed {args.seed})")

    q = quality(pairs, args.max_wrong)
    base = q.pop("_vectors")
    for name, c in (
        ("chosen: numbers guard, 95% upper bound of wrong hits < max", q["chosen"]),
        ("observed wrong-hit rate < max", q["chosen_observed_rate"]),
        ("without numbers guard, upper bound < max", q["chosen_without_numbers_guard"]),
        ("routing.cache.DEFAULT_THRESHOLD", q["current_default"]),
    ):
        print(
            f"threshold {c['threshold']:.3f} ({name})"
            + (" - none qualifies on this sample" if c.get("none_qualified") else "")
            + f":\n    recall {c['recall']:.1%}, precision "
            f"{c['precision']:.1%}, wrong hits {c['wrong_hit_rate']:.2%} "
            f"({c['wrong_hits']} of {q['non_duplicates']:,}; 95% upper "
            f"{c['wrong_hit_rate_upper95']:.2%})"
        )
    print("  threshold  precision  recall  wrong-hit rate  (numbers guard on)")
    for r in q["curve"]:
        if round(r["threshold"] * 100, 3) % 5 == 0 or r["threshold"] == q["chosen"]["threshold"]:
            print(
                f"  {r['threshold']:.3f}      {r['precision']:6.1%}   {r['recall']:6.1%}  "
                f"{r['wrong_hit_rate']:6.2%}"
            )

    threshold = q["chosen"]["threshold"]
    sizes = [int(s) for s in args.sizes.split(",") if s]
    redis_sizes = {int(s) for s in args.redis_sizes.split(",") if s}
    lat = []
    for n in sizes:
        runs = ["memory"] + (["redis"] if n in redis_sizes else [])
        for store_name in runs:
            try:
                r = latency(store_name, n, base, args.lookups, args.redis_url, threshold)
            except Exception as e:  # Redis not running: report, keep the rest
                print(f"  {store_name} at {n}: skipped ({type(e).__name__}: {e})")
                continue
            lat.append(r)
    print("  store   entries  semantic hit p50/p99   exact hit p50/p99   miss p50/p99  (ms)")
    for r in lat:
        cells = "   ".join(
            f"{r[k]['p50_ms']:7.3f} /{r[k]['p99_ms']:7.3f}"
            for k in ("semantic_hit", "exact_hit", "miss")
        )
        print(f"  {r['store']:6s} {r['entries']:8,}   {cells}")
        if "cold_sync_ms" in r:
            f = r["semantic_hit_after_foreign_put"]
            print(
                f"         cold index load {r['cold_sync_ms']:.0f} ms; semantic hit after another "
                f"replica's put p50 {f['p50_ms']:.3f} / p99 {f['p99_ms']:.3f} ms"
            )

    result = {
        "source": str(source.name),
        "sample": len(pairs),
        "total_pairs": total,
        "seed": args.seed,
        "verifier": ver,
        "quality": q,
        "latency": lat,
        "env": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "cpus": os.cpu_count(),
            "machine": platform.processor() or platform.machine(),
        },
    }
    if args.png:
        plot(q, args.png)
        print(f"curve: {args.png}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
        print(f"figures: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
