"""FlexLoRA (Bai et al., 2024): average the dense updates, redistribute by truncated SVD.

State and memory: the accumulator holds one float32 dW_m = sum_k n_k s_k B_k A_k per adapted
module (d_out x d_in each; 6 x 768 x 768 is 14 MB), independent of K but much larger than an
adapter. ``result`` takes the SVD of dW_m / N once per round and stores the top-R factors in
the ordinary global-adapter keys, balanced and folded: B' = U_R sqrt(S_R), A' = sqrt(S_R) V_R^T.
Slices are therefore ordered by singular value, so ``distribute``'s plain truncation to the first
r_k slices yields the best rank-r_k approximation of the averaged dW (Eckart-Young), unfolded to
the client's scale. The global adapter has the same format as RBLA's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from server.aggregation.accumulator import Accumulator
from server.aggregation.base import Strategy
from server.aggregation.keys import classify, key_for
from server.aggregation.rules import Inspected, Tensors
from server.aggregation.update import ClientUpdate
from server.aggregation.validation import Layout

_DW = ".lora_dW"  # accumulator-internal numerator key per module (never in a global adapter)


class FlexLoRAAccumulator(Accumulator):
    """Accumulates dense per-module updates instead of factors."""

    def _fold(self, update: ClientUpdate, info: Inspected) -> None:
        n, s = float(update.num_samples), float(update.scale)
        for key, part in info.parts.items():
            tensor = update.tensors[key]
            if part == "extra":
                self._dense(key, tuple(tensor.shape)).add_(tensor, alpha=n)
            elif part == "lora_A":
                module = classify(key)[1]
                a = tensor.float()
                b = update.tensors[key_for(module, "lora_B")].float()
                self._dense(module + _DW, (b.shape[0], a.shape[1])).addmm_(b, a, alpha=n * s)

    def _dense(self, key: str, shape: tuple[int, ...]) -> torch.Tensor:
        if key not in self._num:
            self._num[key] = torch.zeros(shape, dtype=torch.float32)
        return self._num[key]

    def _layout_from_numerators(self) -> Layout | None:
        # Dense numerators are not uploaded tensors; the layout comes from the next update.
        return None

    def _grow(self, rank: int) -> None:
        # Dense numerators carry no rank; only R (and with it the coverage) grows.
        self._rank = rank

    def result(self) -> Tensors:
        """Top-R balanced SVD factors of the averaged dW per module, plus averaged extras."""
        self._check_finite_sums()
        out = self._previous_copy()
        total = float(self.total_samples)
        for key, num in self._num.items():
            if not key.endswith(_DW):
                out[key] = num / total
                continue
            module = key[: -len(_DW)]
            u, sv, vh = torch.linalg.svd(num / total, full_matrices=False)
            k = min(self._rank, sv.numel())
            root = sv[:k].sqrt()
            b = torch.zeros(num.shape[0], self._rank)
            a = torch.zeros(self._rank, num.shape[1])
            b[:, :k] = u[:, :k] * root
            a[:k] = root[:, None] * vh[:k]
            out[key_for(module, "lora_A")] = a.contiguous()
            out[key_for(module, "lora_B")] = b.contiguous()
        return out


class FlexLoRA(Strategy):
    """Dense averaging of s_k B_k A_k, redistributed as truncated SVD factors."""

    name: ClassVar[str] = "flexlora"
    option_values: ClassVar[dict[str, tuple[Any, ...] | None]] = {}

    def __init__(self, *, r_max: int | None = None) -> None:
        super().__init__(r_max=r_max)

    def accumulator(self, previous: Mapping[str, torch.Tensor] | None = None) -> Accumulator:
        """A dense accumulator (memory: one d_out x d_in float32 matrix per module)."""
        return FlexLoRAAccumulator(self, previous, r_max=self.r_max)
