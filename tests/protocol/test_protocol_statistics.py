"""docs/protocol.md, "Complexity statistics": the formulas as written there, implemented here
in plain Python (no numpy histogram, no SDK), equal the SDK's numbers on fixed inputs.

This module is the one place in the conformance suite that imports ``client_sdk``: to hold
the SDK's statistics to the document, so that a client in another language that follows the
text gets the SDK's numbers (to 1e-9; here they agree to 1e-12).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np
import pytest

from client_sdk.profile import profile

LOSS_BINS = 10


def label_entropy(labels: Sequence[int], num_classes: int | None = None) -> float:
    counts = Counter(labels).values()
    n = len(labels)
    classes = num_classes if num_classes is not None else len(counts)
    if classes < 2:
        return 0.0
    return -sum(c / n * math.log(c / n) for c in counts) / math.log(classes)


def gini_simpson(labels: Sequence[int]) -> float:
    n = len(labels)
    return 1.0 - sum((c / n) ** 2 for c in Counter(labels).values())


def loss_bin(loss: float, low: float, high: float) -> int:
    """The bin of ``loss``: the i with edge_i <= loss < edge_{i+1}, the top edge in bin 9."""
    width = (high - low) / LOSS_BINS
    edges = [low + i * width for i in range(LOSS_BINS)] + [high]
    return max(i for i in range(LOSS_BINS) if edges[i] <= loss)


def loss_entropy(losses: Sequence[float]) -> float:
    low, high = min(losses), max(losses)
    if low == high:
        return 0.0
    counts = Counter(loss_bin(x, low, high) for x in losses).values()
    n = len(losses)
    return -sum(c / n * math.log(c / n) for c in counts) / math.log(LOSS_BINS)


def _on_the_edges() -> list[float]:
    """Losses that fall on bin edges exactly, the maximum among them several times."""
    low, high = 0.3, 2.9
    width = (high - low) / LOSS_BINS
    return [low + i * width for i in range(LOSS_BINS)] + [high, high, 0.3 + 3 * width, 1.7]


RNG = np.random.default_rng(20261204)
CASES = {
    "digits-like shard": (
        RNG.integers(0, 10, 380).tolist(),
        RNG.exponential(0.8, 380).tolist(),
        10,
    ),
    "three classes of ten": ([0] * 50 + [3] * 30 + [7] * 5, RNG.gamma(2.0, 1.0, 85).tolist(), 10),
    "classes unknown": ([1, 1, 2, 5, 5, 5], [0.1, 0.5, 0.5, 2.0, 0.1, 0.9], None),
    "one class": ([4] * 9, RNG.normal(1.0, 0.1, 9).tolist(), 10),
    "one sample": ([2], [0.7], 10),
    "equal losses": ([0, 1, 0, 1], [1.25, 1.25, 1.25, 1.25], 2),
    "losses on the edges": (list(range(14)), _on_the_edges(), 14),
    "negative and tiny losses": ([0, 1, 1, 0, 1], [-1e-9, 0.0, 1e-12, -3e-10, 5e-10], None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_documented_formulas_give_the_sdks_statistics(case: str) -> None:
    labels, losses, num_classes = CASES[case]
    sdk = profile(labels, losses, num_classes=num_classes).as_dict()
    ours = {
        "n_samples": len(labels),
        "label_entropy": label_entropy(labels, num_classes),
        "gini_simpson": gini_simpson(labels),
        "loss_entropy": loss_entropy(losses),
    }
    assert sdk["n_samples"] == ours["n_samples"]
    for name in ("label_entropy", "gini_simpson", "loss_entropy"):
        assert sdk[name] == pytest.approx(ours[name], abs=1e-12), name
        assert 0.0 <= ours[name] <= 1.0 + 1e-12


def test_edge_losses_land_in_the_documented_bins() -> None:
    """The edge rule itself, on the SDK's histogram: an edge opens its bin, the top edge
    closes bin 9."""
    losses = _on_the_edges()
    bins = [loss_bin(x, min(losses), max(losses)) for x in losses]
    assert bins[:LOSS_BINS] == list(range(LOSS_BINS)) and bins[LOSS_BINS] == LOSS_BINS - 1
    counts, _ = np.histogram(losses, bins=LOSS_BINS, range=(min(losses), max(losses)))
    assert counts.tolist() == [Counter(bins)[i] for i in range(LOSS_BINS)]


def test_the_worked_example_of_the_document() -> None:
    stats = profile([0, 0, 1, 2], [0.5, 1.0, 1.0, 3.0], num_classes=3).as_dict()
    assert stats["n_samples"] == 4
    assert stats["label_entropy"] == pytest.approx(0.946394630357186, abs=1e-12)
    assert stats["gini_simpson"] == pytest.approx(0.625, abs=1e-12)
    assert stats["loss_entropy"] == pytest.approx(0.451544993495972, abs=1e-12)


def test_unlabelled_or_unobserved_data_sends_null_criteria() -> None:
    assert profile(None, [0.2, 0.4]).as_dict() == {
        "n_samples": 2,
        "label_entropy": None,
        "gini_simpson": None,
        "loss_entropy": pytest.approx(loss_entropy([0.2, 0.4])),
    }
    assert profile([1, 2, 2]).as_dict()["loss_entropy"] is None
    with pytest.raises(ValueError, match="distinct labels"):
        profile([0, 1, 2], num_classes=2)  # fewer classes than labels seen: refused
