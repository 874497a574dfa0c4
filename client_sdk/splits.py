"""Non-IID client splits for experiments: Dirichlet label skew, optional quantity skew.

numpy only (part of the thin client).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

MAX_DRAWS = 1000


def dirichlet_split(
    labels: Sequence[Any] | np.ndarray,
    n_clients: int,
    alpha: float,
    min_size: int = 10,
    seed: int = 0,
    quantity_skew: float | None = None,
) -> list[np.ndarray]:
    """Split sample indices over ``n_clients`` with per-class proportions ~ Dir(alpha * 1_N).

    Each class's (shuffled) indices are cut at the cumulative proportions; the whole draw is
    repeated until every client has at least ``min_size`` samples (at most 1000 draws).
    ``quantity_skew=sigma`` adds the "double imbalance" quantity skew: client size factors
    q ~ LogNormal(0, sigma) are drawn once per split and multiply every class's proportions
    (renormalised), so some clients are large across all classes. Returns sorted int64 index
    arrays, one per client; deterministic for a given seed.
    """
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {y.shape}")
    if n_clients < 1 or alpha <= 0 or min_size < 0:
        raise ValueError("need n_clients >= 1, alpha > 0 and min_size >= 0")
    if y.size < n_clients * min_size:
        raise ValueError(f"{y.size} samples cannot give {n_clients} clients {min_size} each")
    if quantity_skew is not None and quantity_skew < 0:
        raise ValueError("quantity_skew (log-normal sigma) must be >= 0")
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    for _ in range(MAX_DRAWS):
        size_factor = (
            rng.lognormal(0.0, quantity_skew, n_clients) if quantity_skew else np.ones(n_clients)
        )
        parts: list[list[np.ndarray]] = [[] for _ in range(n_clients)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(y == c))
            share = rng.dirichlet(np.full(n_clients, alpha)) * size_factor
            cuts = (np.cumsum(share / share.sum()) * idx.size).astype(int)[:-1]
            for client, chunk in enumerate(np.split(idx, cuts)):
                parts[client].append(chunk)
        split = [np.sort(np.concatenate(p)).astype(np.int64) for p in parts]
        if min(s.size for s in split) >= min_size:
            return split
    raise ValueError(
        f"no split with min_size={min_size} in {MAX_DRAWS} draws; lower min_size or raise alpha"
    )
