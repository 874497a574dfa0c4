"""Spend a rank budget: one shift of every client's score, found by bisection.

A client's rank is a nondecreasing step function of its score u in [0, 1] (see
``assignment.rank_of``); adding one shift s to every score keeps the clients' order and moves
every rank the same way, so the budget's cost (mean rank, upload bytes) is nondecreasing in s.
The largest s whose cost stays within the limit spends the budget as fully as the grid allows
without exceeding it.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from server.autorank.errors import AutoRankError

BudgetKind = Literal["mean_rank", "upload_bytes_per_round"]
BudgetStatus = Literal["met", "below_minimum", "above_maximum"]
SHIFT_RANGE = 1.0  # scores lie in [0, 1]: a shift of -1 puts everyone at r_min, +1 at r_max
_TOLERANCE = 1e-12
_MAX_STEPS = 200


@dataclass(frozen=True)
class RankBudget:
    """A limit on a cost of the ranks; ``cost`` must be nondecreasing in every rank."""

    kind: BudgetKind
    limit: float
    cost: Callable[[Sequence[int]], float]

    def __post_init__(self) -> None:
        if not self.limit > 0:
            raise AutoRankError(f"a rank budget must be positive, got {self.limit}")


@dataclass(frozen=True)
class BudgetOutcome:
    """What the budget did: the shift, the cost it reached, and whether it was met."""

    kind: BudgetKind
    limit: float
    spent: float
    shift: float
    status: BudgetStatus

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "limit": self.limit,
            "spent": self.spent,
            "shift": self.shift,
            "status": self.status,
        }


def _capped(ranks: Sequence[int], caps: Sequence[int | None] | None) -> list[int]:
    if caps is None:
        return list(ranks)
    return [r if c is None else min(r, c) for r, c in zip(ranks, caps, strict=True)]


def mean_rank_budget(limit: float, caps: Sequence[int | None] | None = None) -> RankBudget:
    """Mean rank over the cohort <= ``limit`` (after each device's own cap, ``caps``)."""

    def cost(ranks: Sequence[int]) -> float:
        capped = _capped(ranks, caps)
        return sum(capped) / len(capped)

    return RankBudget("mean_rank", float(limit), cost)


def upload_budget(
    limit: int,
    bytes_at_rank: Callable[[int], int],
    sampled: int,
    caps: Sequence[int | None] | None = None,
) -> RankBudget:
    """The bytes one round uploads <= ``limit``, whichever ``sampled`` clients the round draws.

    [decision] The worst case (the ``sampled`` largest uploads), not the mean: a budget is a
    cap every round must keep; with every client sampled (the default) the two coincide.
    """
    if sampled < 1:
        raise AutoRankError(f"a round samples at least one client, got {sampled}")

    def cost(ranks: Sequence[int]) -> float:
        sizes = [bytes_at_rank(r) for r in _capped(ranks, caps)]
        return float(sum(heapq.nlargest(sampled, sizes)))

    return RankBudget("upload_bytes_per_round", float(limit), cost)


def fit_shift(
    ranks_at: Callable[[float], list[int]], budget: RankBudget
) -> tuple[list[int], BudgetOutcome]:
    """The ranks at the largest shift whose cost is within ``budget``.

    An unmeetable budget is clamped and says so: below what r_min for everyone costs, everyone
    gets r_min (``below_minimum``); above what r_max for everyone costs, everyone gets r_max
    (``above_maximum``).
    """
    lo, hi = -SHIFT_RANGE, SHIFT_RANGE
    floor, ceiling = ranks_at(lo), ranks_at(hi)
    floor_cost, ceiling_cost = budget.cost(floor), budget.cost(ceiling)
    if floor_cost > budget.limit:
        return floor, BudgetOutcome(budget.kind, budget.limit, floor_cost, lo, "below_minimum")
    if ceiling_cost <= budget.limit:
        status: BudgetStatus = "met" if ceiling_cost == budget.limit else "above_maximum"
        return ceiling, BudgetOutcome(budget.kind, budget.limit, ceiling_cost, hi, status)
    # Invariant: cost(lo) <= limit < cost(hi).
    for _ in range(_MAX_STEPS):
        if hi - lo <= _TOLERANCE:
            break
        mid = (lo + hi) / 2
        if budget.cost(ranks_at(mid)) <= budget.limit:
            lo = mid
        else:
            hi = mid
    ranks = ranks_at(lo)
    return ranks, BudgetOutcome(budget.kind, budget.limit, budget.cost(ranks), lo, "met")
