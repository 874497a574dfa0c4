"""CRITIC + TOPSIS against a hand-worked example, and the rank-mapping edge cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from server.autorank import AutoRankError, assign_ranks, score_late_joiner

# 3 clients x 2 criteria, worked by hand below.
X = [[1.0, 0.0], [2.0, 2.0], [3.0, 1.0]]


def test_hand_worked_critic_and_topsis() -> None:
    # Min-max: col1 -> [0, .5, 1], col2 -> [0, 1, .5]; both std = sqrt(1/6); deviations
    # [-.5, 0, .5] and [-.5, .5, 0] give rho = .25 / .5 = .5; C_j = sqrt(1/6) * (1 - .5) each,
    # so w = [.5, .5].
    # TOPSIS: z1 = [1, 2, 3]/sqrt(14), z2 = [0, 2, 1]/sqrt(5); v = z / 2.
    a, b = 1 / (2 * math.sqrt(14)), 1 / (2 * math.sqrt(5))  # one step in v1, in v2
    # ideal = (3a, 2b), anti-ideal = (a, 0)
    c0 = 0.0  # client 0 is the anti-ideal
    c1 = math.hypot(a, 2 * b) / (a + math.hypot(a, 2 * b))  # D+ = a, D- = hypot(a, 2b)
    c2 = math.hypot(2 * a, b) / (b + math.hypot(2 * a, b))  # D+ = b, D- = hypot(2a, b)
    out = assign_ranks(X, 4, 16)
    np.testing.assert_allclose(out.weights, [0.5, 0.5], rtol=1e-12)
    np.testing.assert_allclose(out.closeness, [c0, c1, c2], rtol=1e-12, atol=1e-12)
    assert out.ranks == [4, 16, round(4 + c2 / c1 * 12)] == [4, 16, 13]
    assert json.loads(json.dumps(out.as_dict()))["ranks"] == [4, 16, 13]


def test_one_client_and_all_equal_get_the_default() -> None:
    assert assign_ranks([[5.0, 0.3]], 2, 16, default=8).ranks == [8]
    same = assign_ranks([[1.0, 2.0]] * 4, 2, 16, default=4)
    assert same.ranks == [4] * 4 and same.weights == [0.5, 0.5]
    assert assign_ranks([[1.0]], 4, 16).ranks == [10]  # no default: the middle of [4, 16]
    with pytest.raises(AutoRankError):
        assign_ranks([[1.0]], 4, 16, default=32)


def test_zero_variance_criterion_gets_weight_zero() -> None:
    out = assign_ranks([[1.0, 7.0, 0.1], [2.0, 7.0, 0.5], [4.0, 7.0, 0.2]], 1, 8)
    assert out.weights[1] == 0.0 and math.isclose(sum(out.weights), 1.0)


def test_missing_criteria_are_dropped_and_weights_renormalised() -> None:
    out = assign_ranks([[1.0, None, 0.0], [2.0, 0.4, 2.0], [3.0, 0.9, 1.0]], 4, 16)
    assert out.dropped == [1] and out.weights[1] == 0.0
    np.testing.assert_allclose([out.weights[0], out.weights[2]], [0.5, 0.5])
    assert out.ranks == assign_ranks(X, 4, 16).ranks


@pytest.mark.parametrize(
    ("grid", "expected"),
    [(None, [4, 16, 13]), ("multiple_of_4", [4, 16, 12]), ("power_of_two", [4, 16, 16]),
     ([4, 11, 16], [4, 16, 11]), ([4, 10, 16], [4, 16, 16])],  # 13 is a tie: goes up
)  # fmt: skip
def test_grids(grid: object, expected: list[int]) -> None:
    assert assign_ranks(X, 4, 16, grid=grid).ranks == expected  # type: ignore[arg-type]


def test_bounds_and_bad_input() -> None:
    ranks = assign_ranks(np.random.default_rng(0).random((20, 3)), 2, 6).ranks
    assert min(ranks) == 2 and max(ranks) == 6
    for bad in ([[-1.0]], [[float("inf")]], [1.0, 2.0], [["a"]]):
        with pytest.raises(AutoRankError):
            assign_ranks(bad, 1, 4)
    with pytest.raises(AutoRankError):
        assign_ranks(X, 8, 4)
    with pytest.raises(AutoRankError, match="grid"):
        assign_ranks(X, 5, 7, grid="power_of_two")


def test_late_joiner_scored_without_moving_the_cohort() -> None:
    cohort = assign_ranks(X, 4, 16)
    top, r_top = score_late_joiner(X, [3.0, 2.0], 4, 16)
    low, r_low = score_late_joiner(X, [1.0, 0.0], 4, 16)
    assert r_top == 16 and r_low == 4 and top > low
    _, r_mid = score_late_joiner(X, [2.0, 1.0], 4, 16, grid="multiple_of_4")
    assert 4 <= r_mid <= 16 and r_mid % 4 == 0
    assert assign_ranks(X, 4, 16).ranks == cohort.ranks
    assert score_late_joiner([[1.0, 2.0]], [5.0, 5.0], 4, 16, default=8)[1] == 8
    assert score_late_joiner(X, [2.0, None], 4, 16)[1] in range(4, 17)
