"""Evaluate the jailbreak / harmful-request classifier (`routing.jailbreak`).

Default: rebuild the held-out split from ../shared/data with the seed and caps recorded in
the artifact (checked against its `test_digest`), embed with MiniLM as the gateway does, and
report precision / recall / F1 / FPR / AUROC on it (overall, per source, per length bin),
XSTest's 250 safe prompts (FPR) and 200 unsafe ones (recall; neither was trained on), the
long-benign FPR and the short-harmful recall, at the shipped threshold.
`--data FILE.csv` (columns `text,label`, 1 = jailbreak or harmful) evaluates that file instead.
Also times `score()` given a precomputed embedding.

    .venv/bin/python bench/safety_eval.py --out bench/results/safety_eval.json
    .venv/bin/python bench/safety_eval.py --data my_prompts.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from routing.jailbreak import (  # noqa: E402 - bench/ is not a package
    SafetyClassifier,
    binary_metrics,
    evaluate,
    load_examples,
    test_digest,
)

SHARED = REPO.parent / "shared" / "data"
COLS = ("n", "precision", "recall", "f1", "fpr", "auroc")


def read_labelled_csv(path: Path) -> tuple[list[str], list[int]]:
    csv.field_size_limit(sys.maxsize)
    texts, labels = [], []
    with Path(path).open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"text", "label"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: needs columns text,label (got {reader.fieldnames})")
        for r in reader:
            lab = (r["label"] or "").strip().lower()
            if lab not in ("0", "1", "true", "false"):
                raise ValueError(f"{path}: label must be 0 or 1, got {r['label']!r}")
            texts.append(r["text"] or "")
            labels.append(int(lab in ("1", "true")))
    return texts, labels


def _scorer(clf: SafetyClassifier, embedder: Any) -> Any:
    cache: dict[str, np.ndarray] = {}

    def score(texts: Sequence[str]) -> np.ndarray:
        new = [t for t in dict.fromkeys(texts) if t not in cache]
        if new:
            cache.update(zip(new, embedder.encode(new), strict=True))
        if not texts:
            return np.zeros(0)
        return clf.score_batch(np.stack([cache[t] for t in texts]), texts)

    return score


def evaluate_shared(clf: SafetyClassifier, embedder: Any, data_dir: Path) -> dict[str, Any]:
    d = clf.meta.get("data", {})
    seed = int(d.get("seed", 0))
    kw = {k: int(d[k]) for k in ("max_per_benchmark", "max_qqp") if k in d}
    examples = load_examples(data_dir, seed, **kw)
    digest = test_digest(examples)
    if d.get("test_digest") and d["test_digest"] != digest:
        raise SystemExit(
            f"the held-out split rebuilt from {data_dir} differs from the one the artifact was "
            f"evaluated on (digest {digest} != {d['test_digest']}): different data?"
        )
    # Only prompts never trained on are embedded: the held-out split, XSTest, stress sets.
    return evaluate(_scorer(clf, embedder), examples, clf.threshold, seed)


def evaluate_csv(clf: SafetyClassifier, embedder: Any, path: Path) -> dict[str, Any]:
    texts, labels = read_labelled_csv(path)
    s = _scorer(clf, embedder)(texts)
    return {"file": str(path), "metrics": binary_metrics(s, labels, clf.threshold)}


def latency(clf: SafetyClassifier, n: int = 2000) -> dict[str, Any]:
    """Microseconds per `score(embedding, text)`: the embedding is given, so this is the
    n-gram hashing and two dot products."""
    rng = np.random.default_rng(0)
    e = rng.standard_normal(clf.dim).astype(np.float32)
    e /= np.linalg.norm(e)
    sentence = "How do I reverse a linked list in Python without recursion? "
    out: dict[str, Any] = {}
    for name, text in (
        ("short (60 chars)", sentence),
        ("1 KB", sentence * 17),
        ("20 KB", sentence * 330),
    ):
        for _ in range(50):
            clf.score(e, text)
        ts = np.empty(n)
        for i in range(n):
            t0 = time.perf_counter()
            clf.score(e, text)
            ts[i] = time.perf_counter() - t0
        out[name] = {
            "p50_us": round(float(np.percentile(ts, 50)) * 1e6, 1),
            "p99_us": round(float(np.percentile(ts, 99)) * 1e6, 1),
        }
    return out


def _cell(v: Any) -> str:
    if isinstance(v, int):
        return f"{v:>10}"
    return f"{v:>10.4f}" if isinstance(v, float) else f"{'-':>10}"


def _row(name: str, m: dict[str, Any]) -> str:
    return f"{name:<42}" + "".join(_cell(m.get(c)) for c in COLS)


def print_table(result: dict[str, Any]) -> None:
    print(f"threshold {result['threshold']:.4f}")
    print(f"{'set':<42}" + "".join(f"{c:>10}" for c in COLS))
    m = result.get("metrics", {})
    if "file" in result:
        print(_row(Path(result["file"]).name, m))
    else:
        rows = [("heldout", m["heldout"])]
        for group in ("heldout_per_source", "heldout_per_length"):
            rows += [(f"  {k}", v) for k, v in m.get(group, {}).items()]
        rows += [(k, m[k]) for k in ("xstest_safe", "xstest_unsafe", "xstest_all")]
        groups = ("long_benign", "benign_instructions", "short_harmful")
        rows += [(k, v) for k, v in m.items() if k.startswith(groups)]
        for name, val in rows:
            print(_row(name, val))
    for name, v in result.get("latency", {}).items():
        print(f"score() {name:<18} p50 {v['p50_us']:>7.1f} us   p99 {v['p99_us']:>7.1f} us")


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--artifact", type=Path, default=None, help="folder or .npz (default: shipped)")
    ap.add_argument("--shared", type=Path, default=SHARED, help="the shared data folder")
    ap.add_argument("--data", type=Path, default=None, help="a CSV with columns text,label")
    ap.add_argument("--out", type=Path, default=None, help="write the result as JSON")
    ap.add_argument(
        "--threshold", type=float, default=None, help="evaluate at this operating point instead"
    )
    ap.add_argument("--no-latency", action="store_true")
    args = ap.parse_args(argv)

    from routing.embedder import Embedder

    clf = SafetyClassifier.load(args.artifact)
    if args.threshold is not None:
        clf.threshold = args.threshold
    emb_cfg = clf.meta.get("embedder", {})
    embedder = Embedder(max_seq_length=int(emb_cfg.get("max_seq_length", 64))).load()
    t0 = time.perf_counter()
    if args.data:
        result: dict[str, Any] = evaluate_csv(clf, embedder, args.data)
    else:
        if not (args.shared / "safety").is_dir():
            ap.error(f"no shared data at {args.shared}: pass --shared DIR or --data FILE.csv")
        result = {"data": str(args.shared), "metrics": evaluate_shared(clf, embedder, args.shared)}
    result["threshold"] = clf.threshold
    result["eval_seconds"] = round(time.perf_counter() - t0, 1)
    if not args.no_latency:
        result["latency"] = latency(clf)
    embedder.close()
    print_table(result)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
