"""Per-model quality predictors: P(model m answers this prompt well) from the prompt's MiniLM
embedding and the bandit's context vector (`routing.quality_data.predictor_inputs`).

Four kinds, all multi-output (one column per model), all predicting from plain arrays in NumPy:

    logreg  one L2-regularised logistic regression per model (fractional targets allowed).
    knn     mean quality of the k most similar training prompts by cosine of the embedding,
            shrunk towards the model's overall mean (RouterBench paper's kNN router).
    mlp     one hidden layer shared by all models, a sigmoid output per model.
    mf      matrix factorisation as RouteLLM does: the prompt is projected into the models'
            embedding space and sigmoid(w . (v_m * P x) + b_m) scores model m.

They are our own rather than scikit-learn estimators because the gateway must predict from
arrays without pickle and without importing scikit-learn at run time; training uses SciPy's
L-BFGS (logreg) and torch (mlp, mf), both already dependencies, imported only when fitting.

Every predictor also carries, per model, the uncertainty of its prediction as the bandit's
prior needs it (`Calibration`): `sigma` is the RMS gap between predicted and observed mean
quality over quantile bins of the prediction on out-of-fold rows (how wrong the predicted mean
is, not the noise of single outcomes, which is subtracted), `noise` the mean squared
error of single outcomes."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

EPS = 1e-6
SIGMA_FLOOR = 0.02


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30.0, 30.0)))


@dataclass(frozen=True)
class Calibration:
    """Per model: uncertainty of the predicted mean (sigma) and outcome noise (MSE)."""

    sigma: np.ndarray  # (k,)
    noise: np.ndarray  # (k,)


def calibration(pred: np.ndarray, y: np.ndarray, bins: int = 10) -> Calibration:
    """From out-of-fold predictions: RMS over quantile bins of (mean predicted - mean observed),
    floored at SIGMA_FLOOR, and the mean squared error."""
    k = pred.shape[1]
    sigma = np.empty(k)
    for j in range(k):
        order = np.argsort(pred[:, j], kind="stable")
        parts = [p for p in np.array_split(order, min(bins, len(order))) if len(p)]
        # A bin's observed mean is itself noisy (variance ~ outcome variance / bin size); that
        # part of the gap is sampling noise, not error of the predicted mean, so it is removed.
        gaps = [
            (pred[p, j].mean() - y[p, j].mean()) ** 2
            - np.mean((y[p, j] - pred[p, j]) ** 2) / len(p)
            for p in parts
        ]
        weights = [len(p) for p in parts]
        sigma[j] = max(SIGMA_FLOOR, float(np.sqrt(max(0.0, np.average(gaps, weights=weights)))))
    noise = np.mean((pred - y) ** 2, axis=0)
    return Calibration(sigma, noise)


class QualityPredictor(ABC):
    kind: ClassVar[str]

    def __init__(
        self, models: tuple[str, ...], arrays: dict[str, np.ndarray], params: dict[str, Any]
    ) -> None:
        self.models = tuple(models)
        self.arrays = {k: np.asarray(v) for k, v in arrays.items()}
        self.params = dict(params)

    @classmethod
    @abstractmethod
    def fit(
        cls, X: np.ndarray, Y: np.ndarray, models: tuple[str, ...], **params: Any
    ) -> QualityPredictor:
        """Fit on inputs X (n, D) and qualities Y (n, k) in [0, 1]."""

    @abstractmethod
    def predict(self, X: np.ndarray) -> np.ndarray:
        """(n, k) predicted quality in [0, 1]."""

    def input_dim(self) -> int:
        return int(self.params["input_dim"])


class LogReg(QualityPredictor):
    kind = "logreg"

    @classmethod
    def fit(
        cls, X: np.ndarray, Y: np.ndarray, models: tuple[str, ...], l2: float = 1.0, **_: Any
    ) -> LogReg:
        from scipy.optimize import minimize

        X = np.asarray(X, dtype=np.float64)
        n, d = X.shape
        k = Y.shape[1]
        mu, sd = X.mean(axis=0), X.std(axis=0) + 1e-6
        Z = (X - mu) / sd

        def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
            W = theta[: d * k].reshape(d, k)
            b = theta[d * k :]
            p = sigmoid(Z @ W + b)
            ll = -np.sum(Y * np.log(p + EPS) + (1 - Y) * np.log(1 - p + EPS)) / n
            g = (p - Y) / n
            gw = Z.T @ g + l2 * W / n
            return ll + 0.5 * l2 * float(np.sum(W * W)) / n, np.concatenate(
                [gw.ravel(), g.sum(axis=0)]
            )

        y0 = np.clip(Y.mean(axis=0), 0.01, 0.99)
        theta0 = np.concatenate([np.zeros(d * k), np.log(y0 / (1 - y0))])
        res = minimize(loss, theta0, jac=True, method="L-BFGS-B", options={"maxiter": 500})
        W = res.x[: d * k].reshape(d, k)
        # Fold the standardisation into the weights: predict is then one product.
        W_raw = W / sd[:, None]
        b_raw = res.x[d * k :] - mu @ W_raw
        return cls(models, {"W": W_raw, "b": b_raw}, {"l2": l2, "input_dim": d})

    def predict(self, X: np.ndarray) -> np.ndarray:
        X = np.atleast_2d(np.asarray(X, dtype=np.float64))
        return sigmoid(X @ self.arrays["W"] + self.arrays["b"])


class Knn(QualityPredictor):
    kind = "knn"

    @classmethod
    def fit(
        cls,
        X: np.ndarray,
        Y: np.ndarray,
        models: tuple[str, ...],
        k: int = 40,
        shrink: float = 5.0,
        emb_dim: int = 384,
        **_: Any,
    ) -> Knn:
        E = np.asarray(X[:, :emb_dim], dtype=np.float64)
        E = E / (np.linalg.norm(E, axis=1, keepdims=True) + 1e-12)
        return cls(
            models,
            {"E": E.astype(np.float16), "Y": Y.astype(np.float16), "mean": Y.mean(axis=0)},
            {"k": k, "shrink": shrink, "emb_dim": emb_dim, "input_dim": X.shape[1]},
        )

    def predict(self, X: np.ndarray) -> np.ndarray:
        X = np.atleast_2d(np.asarray(X, dtype=np.float64))
        d = int(self.params["emb_dim"])
        k = min(int(self.params["k"]), len(self.arrays["E"]))
        E = self.arrays["E"].astype(np.float64)
        Y = self.arrays["Y"].astype(np.float64)
        q = X[:, :d] / (np.linalg.norm(X[:, :d], axis=1, keepdims=True) + 1e-12)
        sims = q @ E.T
        nn = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        s = float(self.params["shrink"])
        return (Y[nn].sum(axis=1) + s * self.arrays["mean"]) / (k + s)


def _torch_fit(
    module: Any,
    Z: np.ndarray,
    Y: np.ndarray,
    epochs: int,
    lr: float,
    weight_decay: float,
    seed: int,
) -> None:
    import torch

    torch.manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x = torch.tensor(Z, dtype=torch.float32)
        y = torch.tensor(Y, dtype=torch.float32)
        opt = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=weight_decay)
        gen = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            perm = torch.randperm(len(x), generator=gen)
            for i in range(0, len(x), 128):
                idx = perm[i : i + 128]
                opt.zero_grad()
                loss = torch.nn.functional.binary_cross_entropy_with_logits(module(x[idx]), y[idx])
                loss.backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)


class Mlp(QualityPredictor):
    kind = "mlp"

    @classmethod
    def fit(
        cls,
        X: np.ndarray,
        Y: np.ndarray,
        models: tuple[str, ...],
        hidden: int = 64,
        epochs: int = 40,
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        dropout: float = 0.2,
        seed: int = 0,
        **_: Any,
    ) -> Mlp:
        import torch

        X = np.asarray(X, dtype=np.float64)
        mu, sd = X.mean(axis=0), X.std(axis=0) + 1e-6
        torch.manual_seed(seed)
        net = torch.nn.Sequential(
            torch.nn.Linear(X.shape[1], hidden),
            torch.nn.ReLU(),
            torch.nn.Dropout(dropout),
            torch.nn.Linear(hidden, Y.shape[1]),
        )
        _torch_fit(net, (X - mu) / sd, Y, epochs, lr, weight_decay, seed)
        net.eval()
        W1 = net[0].weight.detach().numpy().T.astype(np.float64) / sd[:, None]
        b1 = net[0].bias.detach().numpy().astype(np.float64) - mu @ W1
        return cls(
            models,
            {
                "W1": W1,
                "b1": b1,
                "W2": net[3].weight.detach().numpy().T.astype(np.float64),
                "b2": net[3].bias.detach().numpy().astype(np.float64),
            },
            {
                "hidden": hidden,
                "epochs": epochs,
                "lr": lr,
                "weight_decay": weight_decay,
                "dropout": dropout,
                "input_dim": X.shape[1],
            },
        )

    def predict(self, X: np.ndarray) -> np.ndarray:
        X = np.atleast_2d(np.asarray(X, dtype=np.float64))
        h = np.maximum(X @ self.arrays["W1"] + self.arrays["b1"], 0.0)
        return sigmoid(h @ self.arrays["W2"] + self.arrays["b2"])


class MatrixFactorisation(QualityPredictor):
    kind = "mf"

    @classmethod
    def fit(
        cls,
        X: np.ndarray,
        Y: np.ndarray,
        models: tuple[str, ...],
        rank: int = 32,
        epochs: int = 40,
        lr: float = 3e-3,
        weight_decay: float = 1e-2,
        seed: int = 0,
        **_: Any,
    ) -> MatrixFactorisation:
        import torch

        X = np.asarray(X, dtype=np.float64)
        mu, sd = X.mean(axis=0), X.std(axis=0) + 1e-6
        k = Y.shape[1]

        class MF(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.P = torch.nn.Linear(X.shape[1], rank, bias=False)
                self.V = torch.nn.Parameter(torch.randn(k, rank) * 0.1 + 1.0)
                self.w = torch.nn.Parameter(torch.randn(rank) * 0.1)
                self.b = torch.nn.Parameter(torch.zeros(k))

            def forward(self, x: Any) -> Any:
                return (self.P(x)[:, None, :] * self.V[None]) @ self.w + self.b

        torch.manual_seed(seed)
        net = MF()
        _torch_fit(net, (X - mu) / sd, Y, epochs, lr, weight_decay, seed)
        P = net.P.weight.detach().numpy().T.astype(np.float64) / sd[:, None]
        return cls(
            models,
            {
                "P": P,
                "p0": -(mu @ P),
                "V": net.V.detach().numpy().astype(np.float64),
                "w": net.w.detach().numpy().astype(np.float64),
                "b": net.b.detach().numpy().astype(np.float64),
            },
            {
                "rank": rank,
                "epochs": epochs,
                "lr": lr,
                "weight_decay": weight_decay,
                "input_dim": X.shape[1],
            },
        )

    def predict(self, X: np.ndarray) -> np.ndarray:
        X = np.atleast_2d(np.asarray(X, dtype=np.float64))
        z = X @ self.arrays["P"] + self.arrays["p0"]  # (n, r)
        return sigmoid((z * self.arrays["w"]) @ self.arrays["V"].T + self.arrays["b"])


KINDS: dict[str, type[QualityPredictor]] = {
    c.kind: c for c in (LogReg, Knn, Mlp, MatrixFactorisation)
}


def fit_predictor(
    kind: str, X: np.ndarray, Y: np.ndarray, models: tuple[str, ...], **params: Any
) -> QualityPredictor:
    try:
        cls = KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown predictor {kind!r}; known: {', '.join(KINDS)}") from None
    Y = np.clip(np.asarray(Y, dtype=np.float64), 0.0, 1.0)
    if X.ndim != 2 or Y.shape != (X.shape[0], len(models)):
        raise ValueError(f"X (n, D) and Y (n, {len(models)}) expected, got {X.shape}, {Y.shape}")
    return cls.fit(np.asarray(X, dtype=np.float64), Y, tuple(models), **params)


def restore_predictor(
    kind: str, models: tuple[str, ...], arrays: dict[str, np.ndarray], params: dict[str, Any]
) -> QualityPredictor:
    try:
        cls = KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown predictor {kind!r}; known: {', '.join(KINDS)}") from None
    return cls(tuple(models), arrays, params)


def auc(score: np.ndarray, y: np.ndarray) -> float | None:
    """ROC AUC of `score` for the binary outcome y >= 0.5 (None when one class is absent);
    the Mann-Whitney statistic with ties counted half."""
    pos = y >= 0.5
    n1, n0 = int(pos.sum()), int((~pos).sum())
    if n1 == 0 or n0 == 0:
        return None
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score))
    s = score[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))
