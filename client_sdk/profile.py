"""Data-complexity metrics for AutoRank, computed on the device (only scalars leave it).

numpy only: this module is part of the thin client and must not import torch or the server.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

CRITERIA = ("n_samples", "label_entropy", "gini_simpson", "loss_entropy")
LOSS_BINS = 10


@dataclass(frozen=True)
class ComplexityStats:
    """The AutoRank criteria of one client's training data (None: not available)."""

    n_samples: int
    label_entropy: float | None
    gini_simpson: float | None
    loss_entropy: float | None

    def as_dict(self) -> dict[str, Any]:
        """Criterion name -> value, in :data:`CRITERIA` order."""
        return asdict(self)


def _class_shares(labels: np.ndarray, num_classes: int | None) -> tuple[np.ndarray, int]:
    _, counts = np.unique(labels, return_counts=True)
    observed = counts.size
    if num_classes is not None:
        if num_classes < observed:
            raise ValueError(f"num_classes={num_classes} but {observed} distinct labels occur")
        observed = num_classes
    return counts / counts.sum(), observed


def label_entropy(labels: Sequence[Any] | np.ndarray, num_classes: int | None = None) -> float:
    """Label entropy normalised by ln C, in [0, 1] (C = num_classes, else distinct labels)."""
    q, c = _class_shares(np.asarray(labels), num_classes)
    if c < 2:
        return 0.0  # one class: no diversity (and ln 1 = 0 cannot normalise)
    return float(-(q * np.log(q)).sum() / math.log(c))


def gini_simpson(labels: Sequence[Any] | np.ndarray) -> float:
    """1 - sum_c q_c^2: the chance that two random samples have different labels."""
    q, _ = _class_shares(np.asarray(labels), None)
    return float(1.0 - (q**2).sum())


def loss_entropy(losses: Sequence[float] | np.ndarray, bins: int = LOSS_BINS) -> float:
    """Entropy of per-sample losses in ``bins`` equal-width bins over [min, max], / ln bins."""
    x = np.asarray(losses, dtype=np.float64).ravel()
    if x.size == 0 or not np.isfinite(x).all():
        raise ValueError("losses must be a non-empty array of finite numbers")
    if x.max() == x.min():
        return 0.0  # every sample equally hard: one bin
    counts, _ = np.histogram(x, bins=bins, range=(float(x.min()), float(x.max())))
    p = counts[counts > 0] / x.size
    return float(-(p * np.log(p)).sum() / math.log(bins))


def profile(
    labels: Sequence[Any] | np.ndarray | None,
    losses: Sequence[float] | np.ndarray | None = None,
    *,
    num_classes: int | None = None,
) -> ComplexityStats:
    """Compute the AutoRank criteria. ``labels=None`` (unlabelled data) drops the two label
    criteria; ``losses`` (one observation pass of the initial global model) is optional."""
    if labels is None and losses is None:
        raise ValueError("profile needs labels, losses or both")
    lab = None if labels is None else np.asarray(labels)
    loss = None if losses is None else np.asarray(losses, dtype=np.float64).ravel()
    if lab is not None and loss is not None and lab.shape[0] != loss.shape[0]:
        raise ValueError(f"{lab.shape[0]} labels but {loss.shape[0]} losses")
    n = int(lab.shape[0]) if lab is not None else int(loss.shape[0])  # type: ignore[union-attr]
    if n < 1:
        raise ValueError("no training samples")
    return ComplexityStats(
        n_samples=n,
        label_entropy=None if lab is None else label_entropy(lab, num_classes),
        gini_simpson=None if lab is None else gini_simpson(lab),
        loss_entropy=None if loss is None else loss_entropy(loss),
    )
