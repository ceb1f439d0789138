"""Task type of a prompt, from its MiniLM embedding: a multinomial logistic regression.

Trained (train/task_classifier.py) on public benchmark prompts whose dataset says what the
task is (see `DATASET_TASKS`): RouterBench CSVs (label from the `eval_name` column) and
RouterDC JSON files (label from the file's dataset name). Dataset names map to task types a user
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

    python -m train.task_classifier --data ../shared/data/routerbench ../shared/data/routerdc7
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Sequence
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
                f"{npz} not found: train one with `python -m train.task_classifier --data ...`"
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


