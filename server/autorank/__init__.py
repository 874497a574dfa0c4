"""AutoRank: assign each client's LoRA rank from its data-complexity metrics (numpy only)."""

from server.autorank.assignment import (
    AutoRankError,
    RankAssignment,
    allowed_ranks,
    assign_ranks,
    score_late_joiner,
)
from server.autorank.critic import critic_weights, topsis_closeness

__all__ = [
    "AutoRankError",
    "RankAssignment",
    "allowed_ranks",
    "assign_ranks",
    "critic_weights",
    "score_late_joiner",
    "topsis_closeness",
]
