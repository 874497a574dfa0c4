"""CRITIC criterion weights and TOPSIS closeness (ALGORITHMS.md, AutoRank)."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

Matrix = NDArray[np.float64]


def critic_weights(x: Matrix) -> NDArray[np.float64]:
    """CRITIC weights of the columns of ``x`` (clients x criteria, all finite).

    Columns are min-max normalised; sigma_j is the population std; C_j = sigma_j *
    sum_k (1 - rho_jk). Zero-variance columns get weight 0 and are left out of the correlation
    sums [decision: a constant column carries no information, so it must not inflate the other
    columns' "conflict" terms]. If every C_j is 0 the weights are equal.
    """
    n_cols = x.shape[1]
    lo, hi = x.min(axis=0), x.max(axis=0)
    span = hi - lo
    varying = span > 0
    weights = np.zeros(n_cols)
    if n_cols == 0:
        return weights
    if varying.any():
        norm = (x[:, varying] - lo[varying]) / span[varying]
        sigma = norm.std(axis=0)
        rho = (
            np.atleast_2d(np.corrcoef(norm, rowvar=False)) if norm.shape[1] > 1 else np.ones((1, 1))
        )
        info = sigma * (1.0 - rho).sum(axis=1)
        weights[varying] = info
    total = weights.sum()
    if total <= 0:
        return np.full(n_cols, 1.0 / n_cols)
    return weights / total


def topsis_closeness(x: Matrix, weights: NDArray[np.float64]) -> NDArray[np.float64]:
    """TOPSIS relative closeness (all criteria are benefit criteria).

    z = x / ||column||_2 (a zero column stays 0); v = w z; C = D- / (D+ + D-). Rows that sit at
    both the ideal and the anti-ideal (every weighted column constant) get 0.5.
    """
    norms = np.sqrt((x**2).sum(axis=0))
    z = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
    v = z * weights
    d_plus = np.sqrt(((v - v.max(axis=0)) ** 2).sum(axis=1))
    d_minus = np.sqrt(((v - v.min(axis=0)) ** 2).sum(axis=1))
    denom = d_plus + d_minus
    return np.divide(d_minus, denom, out=np.full(x.shape[0], 0.5), where=denom > 0)
