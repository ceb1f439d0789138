"""The two numerical kernels the bandits share: rank-one inverse updates and sampling factors."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

Matrix = NDArray[np.float64]

# Relative to the mean diagonal, so it is scale-free; escalated only when Cholesky fails.
_JITTERS = (1e-12, 1e-10, 1e-8, 1e-6)


def sherman_morrison(a_inv: Matrix, x: NDArray[np.float64]) -> None:
    """In place: a_inv <- (A + x x^T)^-1 given a_inv = A^-1, in O(d^2).

    The update subtracts outer(w, w) with w = a_inv @ x / sqrt(1 + x^T a_inv x); w_i*w_j equals
    w_j*w_i bit for bit, so a symmetric a_inv stays exactly symmetric however many updates it
    absorbs (the textbook outer(u, u) / denom form does too, but costs d^2 divisions)."""
    u = a_inv @ x
    # x^T A^-1 x >= 0 for a positive definite A, so the denominator is >= 1 unless rounding
    # drift has already damaged a_inv; clamping keeps one bad update from blowing it up.
    w = u / np.sqrt(max(1.0 + float(x @ u), 1.0))
    a_inv -= np.outer(w, w)


def spd_inverse(a: Matrix) -> Matrix:
    """Inverse of a symmetric positive definite matrix; ValueError if it is not one."""
    if not np.allclose(a, a.T, rtol=1e-10, atol=1e-12):
        raise ValueError("matrix is not symmetric")
    try:
        chol = np.linalg.cholesky(a)
    except np.linalg.LinAlgError:
        raise ValueError("matrix is not positive definite") from None
    eye = np.eye(a.shape[0])
    chol_inv = np.linalg.solve(chol, eye)
    inv = chol_inv.T @ chol_inv
    # Symmetrise once so the exact-symmetry invariant of sherman_morrison holds from the start.
    return (inv + inv.T) / 2.0


def sampling_factors(cov: Matrix) -> Matrix:
    """Batched F with F @ F^T ~= cov[k] for a (k, d, d) stack of covariances.

    Covariances here are inverses kept by rank-one updates, so after very long runs rounding can
    make one barely indefinite; a tiny relative jitter, escalated only on failure, and finally
    an eigenvalue clip keep sampling alive instead of raising mid-request."""
    k, d = cov.shape[0], cov.shape[-1]
    scale = np.maximum(np.trace(cov, axis1=-2, axis2=-1) / d, np.finfo(np.float64).tiny)
    jittered = np.array(cov, dtype=np.float64, order="C")  # a private copy to add to in place
    jittered.reshape(k, d * d)[:, :: d + 1] += (_JITTERS[0] * scale)[:, None]  # the diagonals
    try:
        return np.linalg.cholesky(jittered)
    except np.linalg.LinAlgError:
        eye = np.eye(d)
        return np.stack([_robust_factor(c, s, eye) for c, s in zip(cov, scale, strict=True)])


def _robust_factor(cov: Matrix, scale: float, eye: Matrix) -> Matrix:
    for jitter in _JITTERS:
        try:
            return np.linalg.cholesky(cov + jitter * scale * eye)
        except np.linalg.LinAlgError:
            continue
    w, v = np.linalg.eigh((cov + cov.T) / 2.0)
    return v * np.sqrt(np.clip(w, 0.0, None))
