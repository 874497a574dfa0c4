"""Properties of AutoRank's bounds reference, prior and budget (hypothesis), and the cohort
reference against the frozen implementation it replaced."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.autorank import (
    WEIGHT_PRIOR,
    allowed_ranks,
    assign_ranks,
    criterion_bounds,
    critic_weights,
    mean_rank_budget,
    rank_of,
    ranks_of,
    score_late_joiner,
    upload_budget,
)
from server.services.ranking import CRITERIA
from tests.autorank import legacy

BOUNDS = criterion_bounds(CRITERIA, 10_000)
GRIDS: list[Any] = [None, "multiple_of_4", "power_of_two", [2, 3, 5, 8, 13]]
PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

unit = st.floats(0.0, 1.0, allow_nan=False)
row = st.tuples(st.integers(1, 50_000).map(float), unit, unit, unit).map(list)
cohorts = st.lists(row, min_size=1, max_size=12)
bounds_pair = st.sampled_from([(2, 16), (1, 8), (4, 32), (2, 13)])


def _step(ranks: list[int], allowed: list[int], a: int, b: int) -> int:
    return abs(allowed.index(ranks[a]) - allowed.index(ranks[b]))


def test_three_iid_shards_get_equal_ranks() -> None:
    # The reported case: three near-identical IID digit shards that the cohort reference
    # spread over 16, 4 and 2. Their loss entropies differ by 0.02: within one rank.
    shards = [[383, 0.995, 0.899, 0.61], [384, 0.998, 0.900, 0.62], [383, 0.996, 0.899, 0.60]]
    ranks = assign_ranks(shards, 2, 16, reference=BOUNDS).ranks
    assert max(ranks) - min(ranks) <= 1 and min(ranks) > 2 and max(ranks) < 16
    spread = assign_ranks(shards, 2, 16).ranks  # the cohort reference: someone gets each end
    assert min(spread) == 2 and max(spread) == 16


@PROPS
@given(cohorts, row, st.floats(0.0, 1e-6), st.sampled_from(GRIDS), bounds_pair)
def test_near_identical_clients_get_equal_ranks(
    cohort: list[list[float]], base: list[float], eps: float, grid: Any, rb: tuple[int, int]
) -> None:
    twin = [base[0] * (1 + eps), *(min(1.0, v + eps) for v in base[1:])]
    out = assign_ranks([*cohort, base, twin], *rb, grid=grid, reference=BOUNDS)
    allowed = allowed_ranks(*rb, grid)
    assert _step(out.ranks, allowed, -1, -2) <= 1
    assert abs(out.closeness[-1] - out.closeness[-2]) < 1e-4


@PROPS
@given(
    cohorts,
    row,
    st.lists(st.floats(0.0, 1.0), min_size=4, max_size=4),
    st.sampled_from(GRIDS),
    st.one_of(st.none(), st.floats(2.0, 13.0)),
)
def test_more_complex_on_every_metric_never_ranks_lower(
    cohort: list[list[float]],
    low: list[float],
    gain: list[float],
    grid: Any,
    mean_rank: float | None,
) -> None:
    high = [
        low[0] * (1 + 10 * gain[0]),
        *(min(1.0, v + g) for v, g in zip(low[1:], gain[1:], strict=True)),
    ]
    budget = None if mean_rank is None else mean_rank_budget(mean_rank)
    out = assign_ranks([*cohort, low, high], 2, 13, grid=grid, reference=BOUNDS, budget=budget)
    assert out.closeness[-1] >= out.closeness[-2]
    assert out.ranks[-1] >= out.ranks[-2]
    x = np.array(out.closeness)
    for i in range(len(x)):  # and every dominating pair in the cohort too
        for j in range(len(x)):
            rows = [*cohort, low, high]
            if all(a >= b for a, b in zip(rows[i], rows[j], strict=True)):
                assert out.ranks[i] >= out.ranks[j]


@PROPS
@given(cohorts, st.sampled_from(GRIDS), bounds_pair, st.floats(0.0, 1.0))
def test_mean_rank_budget_is_kept_and_spent_as_far_as_the_grid_allows(
    cohort: list[list[float]], grid: Any, rb: tuple[int, int], where: float
) -> None:
    allowed = allowed_ranks(*rb, grid)
    limit = allowed[0] + where * (allowed[-1] - allowed[0])
    out = assign_ranks(cohort, *rb, grid=grid, reference=BOUNDS, budget=mean_rank_budget(limit))
    mean = sum(out.ranks) / len(out.ranks)
    assert out.budget is not None and out.budget["status"] == "met"
    assert mean <= limit + 1e-9 and math.isclose(out.budget["spent"], mean)
    assert all(r in allowed for r in out.ranks)
    if min(out.ranks) < allowed[-1]:  # the next shift up would overspend
        nudged = [rank_of(c + out.shift + 1e-9, *rb, allowed) for c in out.closeness]
        assert sum(nudged) / len(nudged) > limit


@PROPS
@given(cohorts, st.integers(1, 12), st.integers(1, 10**6))
def test_upload_budget_is_kept_for_any_sample(
    cohort: list[list[float]], sampled: int, limit: int
) -> None:
    per_rank, fixed = 1000, 300  # bytes(r) = fixed + per_rank * r, as for a LoRA layout

    def bytes_at(r: int) -> int:
        return fixed + per_rank * r

    k = min(sampled, len(cohort))
    out = assign_ranks(cohort, 2, 16, reference=BOUNDS, budget=upload_budget(limit, bytes_at, k))
    assert out.budget is not None
    worst = sum(sorted((bytes_at(r) for r in out.ranks), reverse=True)[:k])
    if out.budget["status"] == "below_minimum":
        assert out.ranks == [2] * len(cohort) and k * bytes_at(2) > limit
    elif out.budget["status"] == "above_maximum":
        assert out.ranks == [16] * len(cohort) and worst < limit
    else:
        assert worst <= limit


@PROPS
@given(cohorts, st.randoms(use_true_random=False), st.sampled_from(GRIDS))
def test_cohort_order_does_not_change_any_rank(
    cohort: list[list[float]], rnd: Any, grid: Any
) -> None:
    order = list(range(len(cohort)))
    rnd.shuffle(order)
    for budget in (None, mean_rank_budget(5.5)):
        a = assign_ranks(cohort, 2, 16, grid=grid, reference=BOUNDS, budget=budget)
        b = assign_ranks(
            [cohort[i] for i in order], 2, 16, grid=grid, reference=BOUNDS, budget=budget
        )
        assert [a.ranks[i] for i in order] == b.ranks
        assert a.weights == b.weights


@PROPS
@given(
    st.lists(
        st.tuples(st.floats(0.0, 1e4), st.floats(0.0, 1.0), st.floats(0.0, 1.0)).map(list),
        min_size=1,
        max_size=10,
    ),
    st.sampled_from(GRIDS),
    st.one_of(st.none(), st.integers(2, 13)),
    st.tuples(st.floats(0.0, 1e4), st.floats(0.0, 1.0), st.floats(0.0, 1.0)).map(list),
)
def test_cohort_reference_reproduces_the_old_assignments(
    matrix: list[list[float]], grid: Any, default: int | None, newcomer: list[float]
) -> None:
    new = assign_ranks(matrix, 2, 13, grid=grid, default=default)
    old = legacy.assign_ranks(matrix, 2, 13, grid=grid, default=default)
    assert new.ranks == old.ranks
    assert new.weights == old.weights and new.closeness == old.closeness
    assert new.reference == "cohort" and new.budget is None and new.shift == 0.0
    assert score_late_joiner(matrix, newcomer, 2, 13, grid, default) == legacy.score_late_joiner(
        matrix, newcomer, 2, 13, grid, default
    )


def test_degenerate_cohorts_get_uniform_weights_without_nan() -> None:
    for matrix in ([[383.0, 0.99, 0.9, 0.6]], [[100.0, 0.5, 0.5, 0.5]] * 4):
        out = assign_ranks(matrix, 2, 16, reference=BOUNDS)
        assert out.weights == pytest.approx([0.25] * 4)
        assert all(math.isfinite(c) for c in out.closeness)
        assert len(set(out.ranks)) == 1 and 2 <= out.ranks[0] <= 16
    # One client is ranked by its own data, not handed the default.
    small = assign_ranks([[10.0, 0.1, 0.1, 0.1]], 2, 16, reference=BOUNDS).ranks[0]
    large = assign_ranks([[9000.0, 0.9, 0.9, 0.9]], 2, 16, reference=BOUNDS).ranks[0]
    assert small < 9 < large


@PROPS
@given(cohorts)
def test_prior_keeps_every_weight_at_least_kappa_over_m(cohort: list[list[float]]) -> None:
    out = assign_ranks(cohort, 2, 16, reference=BOUNDS)
    assert sum(out.weights) == pytest.approx(1.0)
    assert min(out.weights) >= WEIGHT_PRIOR / 4 - 1e-12
    assert out.weight_prior == WEIGHT_PRIOR


def test_prior_is_the_documented_shrinkage() -> None:
    u = np.array([[0.1, 0.2, 0.9], [0.4, 0.2, 0.1], [0.8, 0.3, 0.5]])
    raw = critic_weights(u, normalise=False)
    out = assign_ranks(u, 2, 16, reference=criterion_bounds(CRITERIA[1:]))
    np.testing.assert_allclose(out.weights, (1 - WEIGHT_PRIOR) * raw + WEIGHT_PRIOR / 3)


def test_late_joiner_gets_the_rank_it_would_have_had_at_the_start() -> None:
    cohort = [[300.0, 0.9, 0.8, 0.5], [2000.0, 0.4, 0.3, 0.7], [50.0, 0.2, 0.2, 0.2]]
    out = assign_ranks(cohort, 2, 16, reference=BOUNDS, budget=mean_rank_budget(6))
    allowed = allowed_ranks(2, 16, None)
    for i, r in enumerate(cohort):
        c, rank = score_late_joiner(cohort, r, 2, 16, reference=BOUNDS, shift=out.shift)
        assert c == pytest.approx(out.closeness[i]) and rank == out.ranks[i]
        assert rank == rank_of(out.closeness[i] + out.shift, 2, 16, allowed)


@PROPS
@given(
    st.lists(st.floats(-0.5, 1.5, allow_nan=False), min_size=1, max_size=30),
    st.floats(-1.0, 1.0),
    st.sampled_from(GRIDS),
    bounds_pair,
)
def test_the_vectorised_mapping_is_the_scalar_one(
    scores: list[float], shift: float, grid: Any, rb: tuple[int, int]
) -> None:
    allowed = allowed_ranks(*rb, grid)
    halves = [round(2 * c * (rb[1] - rb[0])) / (2 * (rb[1] - rb[0])) for c in scores]  # ties
    for values in (scores, halves):
        expected = [rank_of(c + shift, *rb, allowed) for c in values]
        assert ranks_of(np.array(values), shift, *rb, allowed) == expected
