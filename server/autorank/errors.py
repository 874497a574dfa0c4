"""AutoRank's one domain error (the service layer turns it into a 422 or a recorded note)."""

from __future__ import annotations


class AutoRankError(ValueError):
    """Bad input to rank assignment (matrix, bounds, grid, budget)."""
