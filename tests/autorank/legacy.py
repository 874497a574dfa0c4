"""AutoRank as it was before the bounds reference (main at e27138f), frozen: the "cohort"
reference must reproduce these assignments exactly. Test support only."""

# ruff: noqa
# mypy: ignore-errors

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


import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray


Grid = str | Sequence[int] | None
GRIDS = ("multiple_of_4", "power_of_two")


class AutoRankError(ValueError):
    """Bad input to rank assignment (matrix, bounds, grid)."""


@dataclass(frozen=True)
class RankAssignment:
    """CRITIC weights (one per criterion; 0 for dropped ones), TOPSIS closeness and ranks."""

    weights: list[float]
    closeness: list[float]
    ranks: list[int]
    dropped: list[int]
    r_min: int
    r_max: int
    grid: str | list[int] | None
    default: int

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
    """The allowed rank nearest to ``value`` (ties go to the larger rank)."""
    return min(allowed, key=lambda r: (abs(r - value), -r))


def _default_rank(default: int | None, allowed: list[int], r_min: int, r_max: int) -> int:
    if default is None:
        return snap((r_min + r_max) / 2, allowed)
    if not r_min <= default <= r_max:
        raise AutoRankError(f"default rank {default} is outside [{r_min}, {r_max}]")
    return int(default)


def _map(c: float, c_min: float, c_max: float, r_min: int, r_max: int, allowed: list[int]) -> int:
    raw = r_min + (c - c_min) / (c_max - c_min) * (r_max - r_min)
    # Round first (the documented formula), then snap to the grid; clamp keeps late joiners in.
    return snap(min(max(round(raw), r_min), r_max), allowed)


def _spread_is_zero(closeness: NDArray[np.float64]) -> bool:
    return closeness.size < 2 or float(closeness.max() - closeness.min()) <= 1e-12


def assign_ranks(
    matrix: Any, r_min: int, r_max: int, grid: Grid = None, default: int | None = None
) -> RankAssignment:
    """Assign a rank to every client (rows of ``matrix``; criteria in columns, benefit type).

    Columns with a missing value (None/NaN) are dropped and the other weights renormalised.
    One client, or all closeness values equal: everyone gets ``default`` (None: the allowed
    rank nearest the middle of [r_min, r_max]).
    """
    x = _as_matrix(matrix)
    allowed = allowed_ranks(r_min, r_max, grid)
    fallback = _default_rank(default, allowed, r_min, r_max)
    keep = ~np.isnan(x).any(axis=0)
    weights = np.zeros(x.shape[1])
    closeness = np.full(x.shape[0], 0.5)
    if keep.any():
        weights[keep] = critic_weights(x[:, keep])
        closeness = topsis_closeness(x[:, keep], weights[keep])
    if _spread_is_zero(closeness):
        ranks = [fallback] * x.shape[0]
    else:
        lo, hi = float(closeness.min()), float(closeness.max())
        ranks = [_map(float(c), lo, hi, r_min, r_max, allowed) for c in closeness]
    return RankAssignment(
        weights=[float(w) for w in weights],
        closeness=[float(c) for c in closeness],
        ranks=ranks,
        dropped=[int(j) for j in np.flatnonzero(~keep)],
        r_min=int(r_min),
        r_max=int(r_max),
        grid=list(grid) if grid is not None and not isinstance(grid, str) else grid,
        default=fallback,
    )


def score_late_joiner(
    cohort_matrix: Any,
    row: Sequence[float | None],
    r_min: int,
    r_max: int,
    grid: Grid = None,
    default: int | None = None,
) -> tuple[float, int]:
    """Score a client that enrols after ranks were assigned, leaving the cohort's ranks alone.

    Rule: the criteria are those present in every cohort row and in ``row``; the weights are
    the cohort's CRITIC weights over them (the newcomer does not move them); TOPSIS is run on
    the cohort plus the new row (so its normalisation and ideal points include the newcomer);
    the new rank maps the newcomer's closeness linearly onto [r_min, r_max] using the min and
    max closeness of the cohort rows in that same run, clamped to the bounds and snapped to the
    grid. A cohort of one, or with no spread, gives ``default``. Returns (closeness, rank).
    """
    x = _as_matrix(cohort_matrix)
    new = _as_matrix([row])
    if new.shape[1] != x.shape[1]:
        raise AutoRankError(f"the new row has {new.shape[1]} criteria, the cohort {x.shape[1]}")
    allowed = allowed_ranks(r_min, r_max, grid)
    fallback = _default_rank(default, allowed, r_min, r_max)
    keep = ~(np.isnan(x).any(axis=0) | np.isnan(new[0]))
    if not keep.any():
        return 0.5, fallback
    weights = critic_weights(x[:, keep])
    closeness = topsis_closeness(np.vstack([x[:, keep], new[:, keep]]), weights)
    cohort, mine = closeness[:-1], float(closeness[-1])
    if _spread_is_zero(cohort) or not math.isfinite(mine):
        return mine, fallback
    return mine, _map(mine, float(cohort.min()), float(cohort.max()), r_min, r_max, allowed)
