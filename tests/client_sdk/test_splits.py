"""Dirichlet label splits with optional quantity skew."""

from __future__ import annotations

import numpy as np
import pytest

from client_sdk.splits import dirichlet_split

LABELS = np.repeat(np.arange(10), 100)


def test_partition_is_exact_and_deterministic() -> None:
    parts = dirichlet_split(LABELS, 8, 0.5, min_size=20, seed=3)
    joined = np.sort(np.concatenate(parts))
    assert np.array_equal(joined, np.arange(LABELS.size))
    assert min(p.size for p in parts) >= 20
    again = dirichlet_split(LABELS, 8, 0.5, min_size=20, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


def test_small_alpha_skews_labels() -> None:
    skewed = dirichlet_split(LABELS, 5, 0.05, min_size=5, seed=0)
    iid = dirichlet_split(LABELS, 5, 1000.0, min_size=5, seed=0)

    def mean_max_share(parts: list[np.ndarray]) -> float:
        return float(np.mean([np.bincount(LABELS[p]).max() / p.size for p in parts]))

    assert mean_max_share(skewed) > 0.4 > mean_max_share(iid)


def test_quantity_skew_spreads_sizes() -> None:
    plain = dirichlet_split(LABELS, 10, 100.0, min_size=5, seed=1)
    skew = dirichlet_split(LABELS, 10, 100.0, min_size=5, seed=1, quantity_skew=1.5)
    assert np.std([p.size for p in skew]) > 3 * np.std([p.size for p in plain])


def test_impossible_requests_fail() -> None:
    with pytest.raises(ValueError):
        dirichlet_split(LABELS[:10], 5, 0.5, min_size=5)
    with pytest.raises(ValueError):
        dirichlet_split(LABELS, 0, 0.5)
