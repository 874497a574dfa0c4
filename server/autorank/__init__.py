"""AutoRank: assign each client's LoRA rank from its data-complexity metrics (numpy only)."""

from server.autorank.assignment import (
    RankAssignment,
    allowed_ranks,
    assign_ranks,
    rank_of,
    ranks_of,
    score_late_joiner,
)
from server.autorank.budget import (
    BudgetOutcome,
    RankBudget,
    fit_shift,
    mean_rank_budget,
    upload_budget,
)
from server.autorank.critic import (
    WEIGHT_PRIOR,
    critic_weights,
    shrink_to_uniform,
    topsis_closeness,
)
from server.autorank.errors import AutoRankError
from server.autorank.reference import (
    DEFAULT_REFERENCE_SAMPLES,
    Bound,
    closeness_to_bounds,
    criterion_bounds,
    to_unit,
)

__all__ = [
    "DEFAULT_REFERENCE_SAMPLES",
    "WEIGHT_PRIOR",
    "AutoRankError",
    "Bound",
    "BudgetOutcome",
    "RankAssignment",
    "RankBudget",
    "allowed_ranks",
    "assign_ranks",
    "closeness_to_bounds",
    "criterion_bounds",
    "critic_weights",
    "fit_shift",
    "mean_rank_budget",
    "rank_of",
    "ranks_of",
    "score_late_joiner",
    "shrink_to_uniform",
    "to_unit",
    "topsis_closeness",
    "upload_budget",
]
