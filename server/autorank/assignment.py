"""AutoRank: map clients' data-complexity metrics to LoRA ranks with CRITIC + TOPSIS."""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from server.autorank.budget import BudgetOutcome, RankBudget, fit_shift
from server.autorank.critic import (
    WEIGHT_PRIOR,
    critic_weights,
    shrink_to_uniform,
    topsis_closeness,
)
from server.autorank.errors import AutoRankError
from server.autorank.reference import Bound, closeness_to_bounds, to_unit

Grid = str | Sequence[int] | None
GRIDS = ("multiple_of_4", "power_of_two")
Reference = Literal["bounds", "cohort"]


@dataclass(frozen=True)
class RankAssignment:
    """CRITIC weights (one per criterion; 0 for dropped ones), TOPSIS closeness and ranks,
    the reference the closeness was measured against, and what the budget did (if any)."""

    weights: list[float]
    closeness: list[float]
    ranks: list[int]
    dropped: list[int]
    r_min: int
    r_max: int
    grid: str | list[int] | None
    default: int
    reference: Reference = "cohort"
    weight_prior: float = 0.0
    shift: float = 0.0
    budget: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able record (what the coordinator persists and the dashboard shows)."""
        return asdict(self)


def _as_matrix(matrix: Any) -> NDArray[np.float64]:
    try:
        x = np.array(
            [[np.nan if v is None else v for v in row] for row in matrix], dtype=np.float64
        )
    except (TypeError, ValueError) as exc:
        raise AutoRankError(f"the decision matrix must be numeric: {exc}") from None
    if x.ndim != 2 or x.shape[0] == 0:
        raise AutoRankError(f"the decision matrix must be clients x criteria, got {x.shape}")
    if np.isinf(x).any() or (x < 0).any():
        raise AutoRankError("criteria must be finite and non-negative")
    return x


def allowed_ranks(r_min: int, r_max: int, grid: Grid) -> list[int]:
    """Ranks in [r_min, r_max] allowed by ``grid`` (None: every integer)."""
    if isinstance(r_min, bool) or isinstance(r_max, bool) or not 1 <= int(r_min) <= int(r_max):
        raise AutoRankError(f"need 1 <= r_min <= r_max, got r_min={r_min}, r_max={r_max}")
    span = range(int(r_min), int(r_max) + 1)
    if grid is None:
        allowed = list(span)
    elif grid == "multiple_of_4":
        allowed = [r for r in span if r % 4 == 0]
    elif grid == "power_of_two":
        allowed = [r for r in span if r & (r - 1) == 0]
    elif isinstance(grid, str):
        raise AutoRankError(f"unknown grid {grid!r}; valid: {', '.join(GRIDS)} or a list of ranks")
    else:
        allowed = sorted({int(r) for r in grid if r_min <= int(r) <= r_max})
    if not allowed:
        raise AutoRankError(f"grid {grid!r} allows no rank in [{r_min}, {r_max}]")
    return allowed


def snap(value: float, allowed: Sequence[int]) -> int:
    """The allowed rank nearest to ``value`` (ties go to the larger rank); ``allowed`` sorted.

    A binary search, not a scan: the budget's bisection snaps every client some 40 times.
    """
    i = bisect.bisect_left(allowed, value)
    if i == 0:
        return allowed[0]
    if i == len(allowed):
        return allowed[-1]
    below, above = allowed[i - 1], allowed[i]
    return above if above - value <= value - below else below


def _default_rank(default: int | None, allowed: list[int], r_min: int, r_max: int) -> int:
    if default is None:
        return snap((r_min + r_max) / 2, allowed)
    if not r_min <= default <= r_max:
        raise AutoRankError(f"default rank {default} is outside [{r_min}, {r_max}]")
    return int(default)


def rank_of(u: float, r_min: int, r_max: int, allowed: list[int]) -> int:
    """The rank of a client whose score (shift included) is ``u``: u = 0 -> r_min, 1 -> r_max.

    Round first (the documented formula), then snap to the grid; clamping u keeps late joiners
    and shifted scores in bounds. Nondecreasing in u (what the budget's bisection relies on).
    """
    raw = r_min + min(max(u, 0.0), 1.0) * (r_max - r_min)
    return snap(min(max(round(raw), r_min), r_max), allowed)


def ranks_of(
    scores: NDArray[np.float64], shift: float, r_min: int, r_max: int, allowed: list[int]
) -> list[int]:
    """``rank_of(c + shift)`` for every score at once (the budget's bisection calls it some 40
    times per cohort). The same IEEE operations in the same order, ``np.rint`` rounding half to
    even as ``round`` does, and the same nearest-rank snap (ties up): equal to ``rank_of``."""
    u = np.clip(scores + shift, 0.0, 1.0)
    rounded = np.clip(np.rint(r_min + u * (r_max - r_min)), r_min, r_max)
    grid = np.asarray(allowed, dtype=np.float64)
    i = np.searchsorted(grid, rounded, side="left")
    above = grid[np.minimum(i, grid.size - 1)]
    below = grid[np.maximum(i - 1, 0)]
    nearest = np.where((i > 0) & (rounded - below < above - rounded), below, above)
    return [int(r) for r in nearest]


def _spread_is_zero(closeness: NDArray[np.float64]) -> bool:
    return closeness.size < 2 or float(closeness.max() - closeness.min()) <= 1e-12


def _canonical(u: NDArray[np.float64]) -> NDArray[np.float64]:
    """The rows in lexicographic order: weights computed on it cannot depend on the order in
    which clients enrolled, not even in the last bit of a float sum."""
    if u.shape[0] < 2:
        return u
    return u[np.lexsort(u.T[::-1])]


def _bounds_weights(u: NDArray[np.float64]) -> NDArray[np.float64]:
    return shrink_to_uniform(critic_weights(_canonical(u), normalise=False), WEIGHT_PRIOR)


def assign_ranks(
    matrix: Any,
    r_min: int,
    r_max: int,
    grid: Grid = None,
    default: int | None = None,
    *,
    reference: Sequence[Bound] | None = None,
    budget: RankBudget | None = None,
) -> RankAssignment:
    """Assign a rank to every client (rows of ``matrix``; criteria in columns, benefit type).

    Columns with a missing value (None/NaN) are dropped and the other weights renormalised.

    ``reference=None`` (the job spec's ``rank.reference: "cohort"``): TOPSIS against the
    cohort's best and worst values, closeness stretched min-max onto [r_min, r_max]; one client,
    or all closeness values equal, gives everyone ``default`` (None: the allowed rank nearest
    the middle of [r_min, r_max]).

    ``reference`` = one :class:`Bound` per column (``"bounds"``): each criterion is scored on
    its fixed range, CRITIC weights (on those unit scores) are shrunk toward uniform by
    ``WEIGHT_PRIOR``, closeness is measured to the bounds and maps linearly onto
    [r_min, r_max]: identical clients get identical ranks, whatever the cohort.

    ``budget``: every score is shifted by the one s that spends the budget (see
    :mod:`server.autorank.budget`); the outcome is recorded in ``budget``.
    """
    x = _as_matrix(matrix)
    allowed = allowed_ranks(r_min, r_max, grid)
    fallback = _default_rank(default, allowed, r_min, r_max)
    if reference is not None and len(reference) != x.shape[1]:
        raise AutoRankError(f"{x.shape[1]} criteria but {len(reference)} reference bounds")
    keep = np.asarray(~np.isnan(x).any(axis=0), dtype=bool)
    weights = np.zeros(x.shape[1])
    closeness = np.full(x.shape[0], 0.5)
    if keep.any() and reference is None:
        weights[keep] = critic_weights(x[:, keep])
        closeness = topsis_closeness(x[:, keep], weights[keep])
    elif keep.any() and reference is not None:
        u = to_unit(x[:, keep], [b for b, k in zip(reference, list(keep), strict=True) if k])
        weights[keep] = _bounds_weights(u)
        closeness = closeness_to_bounds(u, weights[keep])
    scores: NDArray[np.float64] | None = closeness
    if reference is None:
        lo, hi = float(closeness.min()), float(closeness.max())
        zero = _spread_is_zero(closeness)
        # With no spread the cohort reference has nothing to stretch: the default rank, or
        # (with a budget to spend) the middle score that the shift then moves.
        scores = None if zero and budget is None else (
            np.full(x.shape[0], 0.5) if zero else (closeness - lo) / (hi - lo)
        )  # fmt: skip
    outcome: BudgetOutcome | None = None
    if scores is None:
        ranks = [fallback] * x.shape[0]
    elif budget is None:
        ranks = [rank_of(float(c), r_min, r_max, allowed) for c in scores]
    else:
        base = scores

        def ranks_at(shift: float) -> list[int]:
            return ranks_of(base, shift, r_min, r_max, allowed)

        ranks, outcome = fit_shift(ranks_at, budget)
    return RankAssignment(
        weights=[float(w) for w in weights],
        closeness=[float(c) for c in closeness],
        ranks=ranks,
        dropped=[int(j) for j in np.flatnonzero(~keep)],
        r_min=int(r_min),
        r_max=int(r_max),
        grid=list(grid) if grid is not None and not isinstance(grid, str) else grid,
        default=fallback,
        reference="cohort" if reference is None else "bounds",
        weight_prior=0.0 if reference is None else WEIGHT_PRIOR,
        shift=0.0 if outcome is None else outcome.shift,
        budget=None if outcome is None else outcome.as_dict(),
    )


def score_late_joiner(
    cohort_matrix: Any,
    row: Sequence[float | None],
    r_min: int,
    r_max: int,
    grid: Grid = None,
    default: int | None = None,
    *,
    reference: Sequence[Bound] | None = None,
    shift: float = 0.0,
) -> tuple[float, int]:
    """Score a client that enrols after ranks were assigned, leaving the cohort's ranks alone.

    Rule: the criteria are those present in every cohort row and in ``row``; the weights are
    the cohort's CRITIC weights over them (the newcomer does not move them).

    Cohort reference (``reference=None``): TOPSIS is run on the cohort plus the new row (so its
    normalisation and ideal points include the newcomer); the new rank maps the newcomer's
    closeness linearly onto [r_min, r_max] using the min and max closeness of the cohort rows
    in that same run, clamped to the bounds and snapped to the grid. A cohort of one, or with
    no spread, gives ``default``.

    Bounds reference: the newcomer's closeness to the fixed bounds, plus the cohort's budget
    ``shift``, mapped as the cohort's were: exactly the rank it would have had at the start.
    Returns (closeness, rank).
    """
    x = _as_matrix(cohort_matrix)
    new = _as_matrix([row])
    if new.shape[1] != x.shape[1]:
        raise AutoRankError(f"the new row has {new.shape[1]} criteria, the cohort {x.shape[1]}")
    allowed = allowed_ranks(r_min, r_max, grid)
    fallback = _default_rank(default, allowed, r_min, r_max)
    keep = np.asarray(~(np.isnan(x).any(axis=0) | np.isnan(new[0])), dtype=bool)
    if reference is not None:
        if len(reference) != x.shape[1]:
            raise AutoRankError(f"{x.shape[1]} criteria but {len(reference)} reference bounds")
        if not keep.any():
            return 0.5, rank_of(0.5 + shift, r_min, r_max, allowed)
        kept = [b for b, k in zip(reference, list(keep), strict=True) if k]
        weights = _bounds_weights(to_unit(x[:, keep], kept))
        mine = float(closeness_to_bounds(to_unit(new[:, keep], kept), weights)[0])
        return mine, rank_of(mine + shift, r_min, r_max, allowed)
    if not keep.any():
        return 0.5, fallback
    weights = critic_weights(x[:, keep])
    closeness = topsis_closeness(np.vstack([x[:, keep], new[:, keep]]), weights)
    cohort, mine = closeness[:-1], float(closeness[-1])
    if _spread_is_zero(cohort) or not math.isfinite(mine):
        return mine, fallback
    lo, hi = float(cohort.min()), float(cohort.max())
    return mine, rank_of((mine - lo) / (hi - lo) + shift, r_min, r_max, allowed)
