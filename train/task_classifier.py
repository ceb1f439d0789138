"""Train the task-type classifier (routing/task_classifier.py) and the initial k-means
centroids on labelled prompts: RouterBench CSVs and RouterDC JSON files.

    python -m train.task_classifier --data ../shared/data/routerbench ...

Here, not next to the run-time classifier, so serving imports carry no scikit-learn code."""

from __future__ import annotations

import argparse
import ast
import csv
import json
import logging
import random
import sys
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from routing.task_classifier import (
    ARTIFACTS,
    DATASET_TASKS,
    KMEANS,
    KMEANS_KS,
    META,
    NPZ,
    TaskClassifier,
    dataset_name,
    task_of,
)

log = logging.getLogger(__name__)


# -- data -------------------------------------------------------------------------------------


def _prompt_text(cell: str) -> str:
    """RouterBench stores some prompts as a Python list literal of one string."""
    s = cell.strip()
    if s.startswith("[") and s.endswith("]"):
        try:
            v = ast.literal_eval(s)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return s
        if isinstance(v, list) and all(isinstance(x, str) for x in v):
            return "\n".join(v).strip()
    return s


def _files(paths: Iterable[Path]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(q for q in p.iterdir() if q.suffix.lower() in (".csv", ".json"))
        elif p.exists():
            out.append(p)
        else:
            raise FileNotFoundError(p)
    return out


def load_labelled(paths: Iterable[Path]) -> list[tuple[str, str, str]]:
    """(text, task, dataset) rows from RouterBench CSVs and RouterDC JSON files (or folders of
    them). Rows with an empty prompt or label are skipped; exact duplicate texts kept once."""
    csv.field_size_limit(sys.maxsize)
    rows: list[tuple[str, str, str]] = []
    seen: set[str] = set()

    def add(text: str, dataset: str) -> None:
        text = text.strip()
        if not text or not dataset.strip() or text in seen:
            return
        seen.add(text)
        rows.append((text, task_of(dataset), dataset_name(dataset)))

    for f in _files(paths):
        if f.suffix.lower() == ".csv":
            with f.open(newline="", encoding="utf-8") as fh:
                for r in csv.DictReader(fh):
                    prompt, name = r.get("prompt") or "", r.get("eval_name") or ""
                    if prompt.strip() and name.strip():
                        add(_prompt_text(prompt), name)
        else:
            data = json.loads(f.read_text(encoding="utf-8"))
            for item in data if isinstance(data, list) else []:
                q = item.get("question") if isinstance(item, dict) else None
                if isinstance(q, str):
                    add(q, f.stem)
    return rows


def subsample(
    rows: list[tuple[str, str, str]], max_per_source: int | None, seed: int = 0
) -> list[tuple[str, str, str]]:
    """At most `max_per_source` rows per dataset (random, reproducible), original order."""
    if not max_per_source:
        return rows
    rng = random.Random(seed)
    by: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by.setdefault(r[2], []).append(i)
    keep: set[int] = set()
    for idx in by.values():
        keep.update(idx if len(idx) <= max_per_source else rng.sample(idx, max_per_source))
    return [r for i, r in enumerate(rows) if i in keep]


# -- training ---------------------------------------------------------------------------------


def train(
    paths: list[Path],
    out_dir: Path | None = None,
    seed: int = 0,
    *,
    max_per_source: int | None = 1000,
    C: float = 4.0,
    max_seq_length: int = 64,
    embedder: Any = None,
) -> dict[str, Any]:
    """Fit on the labelled prompts in `paths`, report held-out metrics (stratified 20%),
    refit on all, save the artifacts into `out_dir` (default: the shipped folder) and return
    the metrics."""
    from sklearn.cluster import KMeans
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score
    from sklearn.metrics import precision_recall_fscore_support as prfs
    from sklearn.model_selection import train_test_split

    from routing.embedder import Embedder

    t0 = time.perf_counter()
    out_dir = Path(out_dir) if out_dir else ARTIFACTS
    all_rows = load_labelled(paths)
    if not all_rows:
        raise ValueError("no labelled prompts in the given files")
    rows = subsample(all_rows, max_per_source, seed)
    texts = [r[0] for r in rows]
    y = np.array([r[1] for r in rows])
    sources = np.array([r[2] for r in rows])
    labels = sorted(set(y.tolist()))
    if len(labels) < 2:
        raise ValueError(f"need at least two task types, got {labels}")

    embedder = embedder or Embedder(max_seq_length=max_seq_length)
    embedder.load()
    t_emb = time.perf_counter()
    X = embedder.encode(texts).astype(np.float64)
    embed_s = time.perf_counter() - t_emb

    def model() -> LogisticRegression:
        return LogisticRegression(C=C, max_iter=3000, class_weight="balanced")

    idx = np.arange(len(rows))
    tr, te = train_test_split(idx, test_size=0.2, stratify=y, random_state=seed)
    clf = model().fit(X[tr], y[tr])
    pred = clf.predict(X[te])
    ours = TaskClassifier(list(clf.classes_), clf.coef_, clf.intercept_)
    numpy_matches = bool(
        np.allclose(ours.predict_proba(X[te]), clf.predict_proba(X[te]), atol=1e-6)
    )
    p, r, f, n = prfs(y[te], pred, labels=labels, zero_division=0)
    per_source = {
        s: round(float((pred[sources[te] == s] == y[te][sources[te] == s]).mean()), 4)
        for s in sorted(set(sources[te].tolist()))
    }
    metrics: dict[str, Any] = {
        "heldout_accuracy": round(float(accuracy_score(y[te], pred)), 4),
        "heldout_macro_f1": round(float(f1_score(y[te], pred, average="macro")), 4),
        "per_class": {
            lab: {
                "f1": round(float(f[i]), 4),
                "precision": round(float(p[i]), 4),
                "recall": round(float(r[i]), 4),
                "support": int(n[i]),
            }
            for i, lab in enumerate(labels)
        },
        "per_dataset_accuracy": per_source,
        "confusion": {
            "labels": labels,
            "matrix": confusion_matrix(y[te], pred, labels=labels).tolist(),
        },
        "n_train": int(len(tr)),
        "n_test": int(len(te)),
        "numpy_matches_sklearn": numpy_matches,
    }

    final = model().fit(X, y)
    classes = [str(c) for c in final.classes_]
    out_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out_dir / NPZ,
        coef=final.coef_.astype(np.float32),
        intercept=final.intercept_.astype(np.float32),
        classes=np.array(classes),
    )
    km: dict[str, np.ndarray] = {}
    for k in KMEANS_KS:
        if k > len(X):
            break
        fit = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(X)
        km[f"k{k}_centroids"] = fit.cluster_centers_.astype(np.float32)
        km[f"k{k}_sizes"] = np.bincount(fit.labels_, minlength=k).astype(np.int64)
    np.savez_compressed(out_dir / KMEANS, **km)

    import sklearn

    meta = {
        "format": 1,
        "labels": classes,
        "dataset_to_task": DATASET_TASKS,
        "embedder": embedder.config(),
        "model": {
            "type": "LogisticRegression (multinomial, class_weight=balanced)",
            "C": C,
            "seed": seed,
            "sklearn": sklearn.__version__,
        },
        "training": {
            "files": [str(x) for x in _files(paths)],
            "rows_available": len(all_rows),
            "max_per_dataset": max_per_source,
            "rows_used": len(rows),
            "per_dataset": dict(sorted(Counter(sources.tolist()).items())),
            "per_task": dict(sorted(Counter(y.tolist()).items())),
            "embed_seconds": round(embed_s, 1),
            "total_seconds": round(time.perf_counter() - t0, 1),
        },
        "kmeans": {
            "ks": [int(k[1:].split("_")[0]) for k in km if k.endswith("_centroids")],
            "sizes": {k: v.tolist() for k, v in km.items() if k.endswith("_sizes")},
        },
        "metrics": metrics,
    }
    (out_dir / META).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    return {
        **metrics,
        "training": meta["training"],
        "out": str(out_dir),
        "embedder": meta["embedder"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m train.task_classifier",
        description="Train the task-type classifier (and initial k-means centroids) on "
        "labelled prompts: RouterBench CSVs and/or RouterDC JSON files or folders.",
    )
    ap.add_argument("--data", type=Path, nargs="+", required=True)
    ap.add_argument("--out", type=Path, default=ARTIFACTS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--max-per-dataset", type=int, default=1000, help="random subsample per dataset (0: all)"
    )
    ap.add_argument("--C", type=float, default=4.0, help="inverse L2 regularisation")
    ap.add_argument(
        "--max-seq-length",
        type=int,
        default=64,
        help="MiniLM tokens embedded per prompt (head + tail); run time uses the same",
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    metrics = train(
        args.data,
        args.out,
        args.seed,
        max_per_source=args.max_per_dataset or None,
        C=args.C,
        max_seq_length=args.max_seq_length,
    )
    print(json.dumps(metrics, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
