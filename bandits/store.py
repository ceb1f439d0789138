"""Per-arm ridge-regression statistics, stacked so scoring many arms is one batched product.

Arm k's model is A_inv[k] = (ridge*I + sum x x^T)^-1, b[k] = sum r*x and theta[k] = A_inv[k] @ b.
Arms join and leave rarely compared with how often they are scored, so membership changes pay
an O(k*d^2) copy to keep select() free of Python-level loops over arms."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bandits.linalg import sherman_morrison

Vector = NDArray[np.float64]
Matrix = NDArray[np.float64]


class ArmStore:
    def __init__(self, dim: int, ridge: float) -> None:
        self.dim = dim
        self.ridge = ridge
        self.names: list[str] = []
        self._index: dict[str, int] = {}
        self.A_inv: NDArray[np.float64] = np.empty((0, dim, dim))
        self.b: Matrix = np.empty((0, dim))
        self.theta: Matrix = np.empty((0, dim))
        self.n: NDArray[np.int64] = np.empty(0, dtype=np.int64)
        # stamp[k] changes whenever arm k's statistics do, and is never reused, so derived
        # per-arm data (Thompson's Cholesky factors) can be cached by stamp. Not persisted.
        self.stamp: NDArray[np.int64] = np.empty(0, dtype=np.int64)
        self._clock = 0

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def __len__(self) -> int:
        return len(self.names)

    def put(self, name: str, a_inv: Matrix, b: Vector, n: int, theta: Vector | None = None) -> int:
        """Insert an arm, or overwrite an existing one's statistics in its current slot."""
        if theta is None:
            theta = a_inv @ b
        k = self._index.get(name)
        if k is not None:
            self.A_inv[k], self.b[k], self.theta[k], self.n[k] = a_inv, b, theta, n
            self.stamp[k] = self._tick()
            return k
        k = len(self.names)
        self.names.append(name)
        self._index[name] = k
        self.A_inv = np.concatenate([self.A_inv, a_inv[None]])
        self.b = np.concatenate([self.b, b[None]])
        self.theta = np.concatenate([self.theta, theta[None]])
        self.n = np.append(self.n, np.int64(n))
        self.stamp = np.append(self.stamp, np.int64(self._tick()))
        return k

    def put_cold(self, name: str) -> int:
        return self.put(name, np.eye(self.dim) / self.ridge, np.zeros(self.dim), 0)

    def remove(self, name: str) -> None:
        k = self._index.pop(name)
        del self.names[k]
        self.A_inv = np.delete(self.A_inv, k, axis=0)
        self.b = np.delete(self.b, k, axis=0)
        self.theta = np.delete(self.theta, k, axis=0)
        self.n = np.delete(self.n, k)
        self.stamp = np.delete(self.stamp, k)
        self._index = {a: i for i, a in enumerate(self.names)}

    def index_of(self, name: str) -> int | None:
        return self._index.get(name)

    def slot(self, name: str) -> int:
        """Index of `name`, adding it cold first if it is new."""
        k = self._index.get(name)
        return self.put_cold(name) if k is None else k

    def slots(self, names: Sequence[str]) -> NDArray[np.intp]:
        return np.fromiter((self.slot(a) for a in names), dtype=np.intp, count=len(names))

    def update(self, k: int, x: Vector, reward: float) -> None:
        a_inv = self.A_inv[k]  # a view: the rank-one update lands in the stack
        sherman_morrison(a_inv, x)
        self.b[k] += reward * x
        self.theta[k] = a_inv @ self.b[k]
        self.n[k] += 1
        self.stamp[k] = self._tick()

    def _tick(self) -> int:
        self._clock += 1
        return self._clock

    def to_state(self) -> list[dict[str, Any]]:
        # theta is saved rather than recomputed so a reload cannot differ by a rounding bit.
        return [
            {
                "name": name,
                "n": int(self.n[k]),
                "A_inv": self.A_inv[k].tolist(),
                "b": self.b[k].tolist(),
                "theta": self.theta[k].tolist(),
            }
            for k, name in enumerate(self.names)
        ]

    @classmethod
    def from_state(cls, dim: int, ridge: float, arms: list[dict[str, Any]]) -> ArmStore:
        store = cls(dim, ridge)
        for entry in arms:
            try:
                name = entry["name"]
                a_inv = np.array(entry["A_inv"], dtype=np.float64)
                b = np.array(entry["b"], dtype=np.float64)
                theta = np.array(entry["theta"], dtype=np.float64)
                n = entry["n"]
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"malformed arm state: {exc!r}") from None
            if not isinstance(name, str) or not name:
                raise ValueError(f"arm name must be a non-empty str, got {name!r}")
            if name in store:
                raise ValueError(f"arm {name!r} appears twice in the state")
            if a_inv.shape != (dim, dim) or b.shape != (dim,) or theta.shape != (dim,):
                raise ValueError(f"arm {name!r}: statistics do not match dim={dim}")
            if not (np.isfinite(a_inv).all() and np.isfinite(b).all() and np.isfinite(theta).all()):
                raise ValueError(f"arm {name!r}: non-finite statistics")
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise ValueError(f"arm {name!r}: n must be a non-negative int, got {n!r}")
            store.put(name, a_inv, b, n, theta)
        return store
