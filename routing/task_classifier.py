"""Task type of a prompt, from its MiniLM embedding: a multinomial logistic regression.

Trained on public benchmark prompts whose dataset says what the task is (see
`DATASET_TASKS`): RouterBench CSVs (label from the `eval_name` column) and RouterDC JSON
files (label from the file's dataset name). Dataset names map to task types a user
understands:

    code          mbpp, humaneval                 write/complete a program
    math          gsm8k                           grade-school arithmetic word problems
    knowledge     mmlu, arc_challenge             exam-style factual/academic questions
    commonsense   winogrande                      everyday reasoning (fill the blank)
    multilingual  cmmlu                           non-English questions (the training data is
                                                  Chinese: CMMLU; other languages only get
                                                  here as far as MiniLM places them nearby)

A name not in the table becomes its own task type (its normalised dataset name).

Training (scikit-learn, only here) fits on a stratified 80%, reports held-out accuracy and
per-class F1 on the other 20%, then refits on everything and saves *plain arrays*:
`artifacts/task_classifier.npz` (coef, intercept, classes), `artifacts/task_classifier.json`
(labels, mapping, embedder settings, metrics) and `artifacts/kmeans_centroids.npz` (initial
k-means centroids for k = 1..8 fitted on the same embeddings). At run time prediction is a
NumPy softmax; there is no pickle and no scikit-learn import.

    python -m routing.task_classifier --data ../shared/data/routerbench ../shared/data/routerdc7
"""

from __future__ import annotations

import argparse
import ast
import csv
import hashlib
import json
import logging
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
NPZ = "task_classifier.npz"
META = "task_classifier.json"
KMEANS = "kmeans_centroids.npz"
KMEANS_KS = tuple(range(1, 9))

DATASET_TASKS: dict[str, str] = {
    "mbpp": "code",
    "humaneval": "code",
    "gsm8k": "math",
    "mmlu": "knowledge",
    "arc_challenge": "knowledge",
    "winogrande": "commonsense",
    "winograde": "commonsense",  # RouterDC's file name
    "cmmlu": "multilingual",
}


def dataset_name(raw: str) -> str:
    """'arc-challenge', 'gsm8k-train', 'mmlu_train' -> 'arc_challenge', 'gsm8k', 'mmlu'."""
    name = raw.strip().lower().replace("-", "_").replace(" ", "_")
    return re.sub(r"_(?:train|test|val|validation|dev)$", "", name)


def task_of(dataset: str) -> str:
    name = dataset_name(dataset)
    return DATASET_TASKS.get(name, name)


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


# -- the classifier at run time ---------------------------------------------------------------


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class TaskClassifier:
    """Multinomial logistic regression on the 384-d embedding, predicted with NumPy."""

    def __init__(
        self,
        labels: Sequence[str],
        coef: np.ndarray,
        intercept: np.ndarray,
        meta: dict[str, Any] | None = None,
    ) -> None:
        coef = np.asarray(coef, dtype=np.float64)
        intercept = np.asarray(intercept, dtype=np.float64).reshape(-1)
        if coef.ndim != 2 or coef.shape[0] != len(labels) or intercept.shape[0] != len(labels):
            raise ValueError("coef must be (n_labels, dim) and intercept (n_labels,)")
        self.labels: tuple[str, ...] = tuple(labels)
        self.coef, self.intercept = coef, intercept
        self.meta = meta or {}

    @property
    def dim(self) -> int:
        return self.coef.shape[1]

    @property
    def fingerprint(self) -> str:
        """8 hex digits identifying these weights (and so the training run that also made
        the shipped k-means centroids): part of the feature layout, so bandit priors fitted
        on another artifact are not mistaken for these."""
        h = hashlib.sha1(",".join(self.labels).encode())
        h.update(np.round(self.coef, 5).astype(np.float32).tobytes())
        h.update(np.round(self.intercept, 5).astype(np.float32).tobytes())
        return h.hexdigest()[:8]

    @classmethod
    def load(cls, path: Path | str | None = None) -> TaskClassifier:
        """The shipped artifact by default; `path` may be its folder or the .npz file."""
        p = Path(path) if path else ARTIFACTS
        npz = p / NPZ if p.is_dir() else p
        if not npz.exists():
            raise FileNotFoundError(
                f"{npz} not found: train one with `python -m routing.task_classifier --data ...`"
            )
        with np.load(npz, allow_pickle=False) as z:
            labels = [str(c) for c in z["classes"]]
            coef, intercept = z["coef"], z["intercept"]
        meta_path = npz.with_name(META)
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        return cls(labels, coef, intercept, meta)

    def decision_function(self, emb: np.ndarray) -> np.ndarray:
        return np.asarray(emb, dtype=np.float64) @ self.coef.T + self.intercept

    def predict_proba(self, emb: np.ndarray) -> np.ndarray:
        """(n_labels,) for one embedding, (n, n_labels) for a batch; columns follow `labels`."""
        return softmax(self.decision_function(emb))

    def predict(self, emb: np.ndarray) -> tuple[str, float] | list[tuple[str, float]]:
        p = self.predict_proba(emb)
        if p.ndim == 1:
            i = int(p.argmax())
            return self.labels[i], float(p[i])
        idx = p.argmax(axis=1)
        return [(self.labels[i], float(p[j, i])) for j, i in enumerate(idx)]


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
        prog="python -m routing.task_classifier",
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
