"""CRITIC criterion weights and TOPSIS closeness (ALGORITHMS.md, AutoRank)."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

Matrix = NDArray[np.float64]
WEIGHT_PRIOR = 0.1  # kappa: the share of the weight that is uniform whatever the cohort


def critic_weights(x: Matrix, *, normalise: bool = True) -> NDArray[np.float64]:
    """CRITIC weights of the columns of ``x`` (clients x criteria, all finite).

    Columns are min-max normalised (``normalise=False``: ``x`` is already on a fixed [0, 1]
    scale, e.g. the criteria's bounds, and sigma is measured on it); sigma_j is the population std;
    C_j = sigma_j * sum_k (1 - rho_jk). Zero-variance columns get weight 0 and are left out of
    the correlation sums [decision: a constant column carries no information, so it must not
    inflate the other columns' "conflict" terms]. If every C_j is 0 the weights are equal.
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
        # rho is scale-free, so it always comes from the min-max columns (a span of 1e-300
        # would underflow corrcoef's std); sigma from the scale the caller chose.
        sigma = norm.std(axis=0) if normalise else x[:, varying].std(axis=0)
        rho = (
            np.atleast_2d(np.corrcoef(norm, rowvar=False)) if norm.shape[1] > 1 else np.ones((1, 1))
        )
        info = sigma * (1.0 - rho).sum(axis=1)
        weights[varying] = info
    total = float(weights.sum())
    if total <= 0:
        return np.full(n_cols, 1.0 / n_cols)
    return weights / total


def shrink_to_uniform(
    weights: NDArray[np.float64], kappa: float = WEIGHT_PRIOR
) -> NDArray[np.float64]:
    """w = (1 - kappa) w_critic + kappa / m: CRITIC weights shrunk toward the uniform prior.

    A few near-identical clients make sigma and rho mostly noise, so the raw CRITIC weights
    swing from one cohort to the next; the prior bounds every weight below by kappa / m, so no
    criterion is silenced by noise. A sum-to-one input stays sum-to-one.
    """
    m = len(weights)
    if m == 0:
        return weights
    if not 0.0 <= kappa <= 1.0:
        raise ValueError(f"the weight prior kappa must lie in [0, 1], got {kappa}")
    return (1.0 - kappa) * weights + kappa / m


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
    closeness = np.full(x.shape[0], 0.5)
    np.divide(d_minus, denom, out=closeness, where=denom > 0)
    return closeness
