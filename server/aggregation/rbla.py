"""RBLA: rank-based LoRA aggregation (Chen et al., arXiv 2408.08699).

Slice i (row i of A, column i of B) is averaged only over the clients whose rank exceeds i:
A_g[i] = sum_{k: r_k > i} p_k A'_k[i] / P_i. This is the base class's default divisor, so the
strategy is just the base contract: A and B uploaded, shared extras averaged with p_k.
"""

from __future__ import annotations

from typing import ClassVar

from server.aggregation.base import Strategy


class RBLA(Strategy):
    """Per-slice weighted mean of scale-folded A and B (the default for heterogeneous ranks)."""

    name: ClassVar[str] = "rbla"
