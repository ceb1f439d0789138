"""Online k-means over query embeddings (GreenServ's semantic clusters, K=3 by default).

Centroids start from the ones shipped in `routing/artifacts/kmeans_centroids.npz` (fitted
with k-means++ on the task classifier's training embeddings, for k = 1..8), or, for a k
that is not shipped, from the first k distinct points seen. Each `update(x)` moves the
nearest centroid towards x by eta = max(1 / n_c, lr_floor), the running-mean step
(MacQueen) with a floor so the clusters keep following the traffic slowly after many
updates. Shipped centroids start with n_c = min(training cluster size, prior_count), so live
traffic can reshape them without a few early queries throwing them around. Distances are
Euclidean (on L2-normalised embeddings that ranks like cosine). Pure NumPy, thread-safe.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

ARTIFACT = Path(__file__).resolve().parent / "artifacts" / "kmeans_centroids.npz"


class OnlineKMeans:
    def __init__(
        self,
        k: int = 3,
        dim: int = 384,
        centroids: np.ndarray | None = None,
        counts: np.ndarray | None = None,
        *,
        lr_floor: float = 0.002,
        min_distance: float = 1e-6,
    ) -> None:
        if k < 1 or dim < 1:
            raise ValueError("k and dim must be >= 1")
        if not 0.0 <= lr_floor <= 1.0:
            raise ValueError("lr_floor must be in [0, 1]")
        self.k, self.dim = k, dim
        self.lr_floor = lr_floor
        self.min_distance = min_distance
        self._lock = threading.Lock()
        if centroids is None:
            self.centroids = np.zeros((0, dim), dtype=np.float64)
            self.counts = np.zeros(0, dtype=np.int64)
        else:
            c = np.asarray(centroids, dtype=np.float64)
            if c.ndim != 2 or c.shape[1] != dim or not 1 <= c.shape[0] <= k:
                raise ValueError(f"centroids must be (<= {k}, {dim}), got {c.shape}")
            self.centroids = c.copy()
            n = np.ones(len(c), dtype=np.int64) if counts is None else np.asarray(counts)
            if n.shape != (len(c),):
                raise ValueError("counts must have one entry per centroid")
            self.counts = np.maximum(n.astype(np.int64), 1)

    @classmethod
    def from_artifact(
        cls, k: int = 3, path: Path | None = None, *, prior_count: int = 100, **kw: Any
    ) -> OnlineKMeans:
        """Shipped centroids for this k when the artifact has them, else an empty model."""
        path = path or ARTIFACT
        dim = int(kw.pop("dim", 384))
        if path.exists():
            with np.load(path, allow_pickle=False) as z:
                key = f"k{k}_centroids"
                if key in z.files and z[key].shape == (k, dim):
                    c = z[key]
                    sizes = z[f"k{k}_sizes"] if f"k{k}_sizes" in z.files else np.ones(k)
                    return cls(k, dim, c, np.minimum(sizes, prior_count), **kw)
        return cls(k, dim, **kw)

    @property
    def ready(self) -> bool:
        return len(self.centroids) == self.k

    def _check(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        if x.shape[0] != self.dim:
            raise ValueError(f"expected a {self.dim}-vector, got {x.shape[0]}")
        return x

    def _nearest(self, x: np.ndarray) -> tuple[int, float]:
        d = ((self.centroids - x) ** 2).sum(axis=1)
        i = int(np.argmin(d))
        return i, float(d[i])

    def assign(self, x: np.ndarray) -> int:
        """Index of the nearest centroid (0 while there is none yet)."""
        x = self._check(x)
        with self._lock:
            if len(self.centroids) == 0:
                return 0
            return self._nearest(x)[0]

    def assign_many(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        with self._lock:
            if len(self.centroids) == 0:
                return np.zeros(len(X), dtype=np.int64)
            d = (X**2).sum(1)[:, None] - 2 * X @ self.centroids.T + (self.centroids**2).sum(1)
            return np.argmin(d, axis=1)

    def update(self, x: np.ndarray) -> int:
        """Assign x and move that centroid towards it; returns the cluster index. Until k
        centroids exist, a point farther than `min_distance` from all becomes a new one."""
        x = self._check(x)
        with self._lock:
            if len(self.centroids) < self.k and (
                len(self.centroids) == 0 or self._nearest(x)[1] > self.min_distance**2
            ):
                self.centroids = np.vstack([self.centroids, x])
                self.counts = np.append(self.counts, 1)
                return len(self.centroids) - 1
            i, _ = self._nearest(x)
            self.counts[i] += 1
            eta = max(1.0 / self.counts[i], self.lr_floor)
            self.centroids[i] += eta * (x - self.centroids[i])
            return i

    def state(self) -> dict[str, Any]:
        """JSON-serialisable snapshot (plain lists and numbers)."""
        with self._lock:
            return {
                "k": self.k,
                "dim": self.dim,
                "lr_floor": self.lr_floor,
                "min_distance": self.min_distance,
                "centroids": self.centroids.tolist(),
                "counts": self.counts.tolist(),
            }

    @classmethod
    def load(cls, state: dict[str, Any]) -> OnlineKMeans:
        """Inverse of `state()`."""
        c = np.asarray(state["centroids"], dtype=np.float64).reshape(-1, int(state["dim"]))
        return cls(
            int(state["k"]),
            int(state["dim"]),
            c if len(c) else None,
            np.asarray(state["counts"], dtype=np.int64) if len(c) else None,
            lr_floor=float(state.get("lr_floor", 0.002)),
            min_distance=float(state.get("min_distance", 1e-6)),
        )
