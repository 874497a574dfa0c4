"""AutoRank client metrics (numpy only)."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from client_sdk.profile import CRITERIA, ComplexityStats, profile


def test_balanced_labels_and_uniform_losses() -> None:
    stats = profile([0, 1, 2, 3] * 5, np.linspace(0.0, 1.0, 20), num_classes=4)
    assert stats.n_samples == 20
    assert math.isclose(stats.label_entropy or 0, 1.0)
    assert math.isclose(stats.gini_simpson or 0, 0.75)
    assert math.isclose(stats.loss_entropy or 0, 1.0)  # 2 losses in each of 10 bins
    assert tuple(stats.as_dict()) == CRITERIA


def test_skewed_labels_hand_computed() -> None:
    stats = profile(["a", "a", "a", "b"], num_classes=3)
    q = np.array([0.75, 0.25])
    assert math.isclose(stats.label_entropy or 0, float(-(q * np.log(q)).sum() / math.log(3)))
    assert math.isclose(stats.gini_simpson or 0, 1 - 0.75**2 - 0.25**2)
    assert stats.loss_entropy is None


def test_degenerate_inputs() -> None:
    one = profile([7, 7, 7], [0.5, 0.5, 0.5])
    assert one.label_entropy == 0.0 and one.gini_simpson == 0.0 and one.loss_entropy == 0.0
    unlabelled = profile(None, [0.1, 0.9])
    assert unlabelled == ComplexityStats(2, None, None, unlabelled.loss_entropy)
    with pytest.raises(ValueError):
        profile([0, 1], [0.1])
    with pytest.raises(ValueError):
        profile([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError):
        profile([0, 1, 2], num_classes=2)


def test_profile_does_not_import_torch_or_server() -> None:
    code = (
        "import sys, client_sdk.profile, client_sdk.splits;"
        "bad = [m for m in ('torch', 'server') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
