"""RBLA (Chen et al., arXiv 2408.08699) and RBLA-shrink, the platform's variant.

RBLA: slice i (row i of A, column i of B) is averaged only over the clients whose rank exceeds
i: A_g[i] = sum_{k: r_k > i} p_k A'_k[i] / P_i. This is the base class's default divisor, so the
strategy is just the base contract: A and B uploaded, shared extras averaged with p_k.

RBLA-shrink (docs/algorithms.md) changes two things:

1. **Shrink.** Slice i moves the global only by the share of the samples that trained it,
   A_g[i] = (P_i / N) RBLA_i + (1 - P_i / N) A_prev[i]: FedAvg over full-rank models in which a
   client of rank r_k leaves slices >= r_k where the global had them. A slice one large client
   trains can no longer outgrow the slices every client trains.
2. **Re-factor.** Each module's averaged factors are re-written as the balanced SVD factors of
   their own product, B_g = U sqrt(S), A_g = sqrt(S) V^T, strongest direction first. dW = B_g A_g
   is unchanged, but a client of rank r now receives the best rank-r part of the global dW
   (Eckart-Young), as under FlexLoRA, instead of the first r slices by index. The SVD is of the
   R x R core of two thin QRs: O(R^2 (d_in + d_out)) per module, no dense dW.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from server.aggregation.base import Strategy
from server.aggregation.baselines import ZeroPad
from server.aggregation.keys import classify, key_for
from server.aggregation.rules import PartialSums, Tensors


class RBLA(Strategy):
    """Per-slice weighted mean of scale-folded A and B."""

    name: ClassVar[str] = "rbla"


class RBLAShrink(ZeroPad):
    """RBLA's per-slice mean shrunk toward the previous global by the slice's sample share,
    then each module's slices sorted strongest first.

    The shrink is zero-padding with the previous global as the padding: the divisor is the
    round's total sample count (ZeroPad's) and slice i gets ``1 - P_i / N`` of its previous
    value. A slice no client holds keeps its previous value (the ``uncovered`` option is not
    offered). Without a previous adapter the shrink is zero-padding.
    """

    name: ClassVar[str] = "rbla-shrink"
    option_values: ClassVar[dict[str, tuple[Any, ...] | None]] = {}

    def previous_share(self, acc: PartialSums) -> torch.Tensor:
        """``1 - P_i / N`` on covered slices: the samples that did not train slice i vote for
        its previous value (uncovered slices are restored whole by the accumulator)."""
        cov = acc.coverage_tensor()
        return torch.where(cov > 0, 1.0 - cov / max(float(acc.total_samples), 1.0), 0.0)

    def finish(self, result: Tensors) -> Tensors:
        """Re-factor every module as balanced SVD factors of its B A, strongest first."""
        modules = {classify(k)[1] for k in result if classify(k)[0] == "lora_A"}
        for module in modules:
            a_key, b_key = key_for(module, "lora_A"), key_for(module, "lora_B")
            if b_key in result:
                result[a_key], result[b_key] = refactor(result[a_key], result[b_key])
        return result


#: Singular values below this fraction of the largest carry no direction worth keeping.
_NULL = 1e-6


def refactor(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A', B')`` with ``B' A' = B A``: ``B' = U sqrt(S)``, ``A' = sqrt(S) V^T`` from the SVD
    of ``B A`` (computed from thin QRs of ``B`` and ``A^T``), singular values descending.

    Slices without a direction (a null singular value, or beyond min(d_in, d_out)) keep their
    own row of ``A`` with a zero column of ``B``: like a fresh LoRA slice they add nothing to dW
    and can still learn (a zero A row and zero B column would never get a gradient again).
    """
    q_b, r_b = torch.linalg.qr(b)  # (d_out, k_b), (k_b, R)
    q_a, r_a = torch.linalg.qr(a.T)  # (d_in, k_a), (k_a, R)
    u, sv, vh = torch.linalg.svd(r_b @ r_a.T)
    if sv.numel() == 0 or float(sv[0]) <= 0.0:
        return a, b
    live = int((sv > sv[0] * _NULL).sum())
    root = sv[:live].sqrt()
    new_a, new_b = a.clone(), torch.zeros_like(b)
    new_a[:live] = root[:, None] * (vh[:live] @ q_a.T)
    new_b[:, :live] = (q_b @ u[:, :live]) * root
    return new_a.contiguous(), new_b.contiguous()
