"""Baselines the paper methods are measured against: FedIT, FFA-LoRA, zero-padding, HetLoRA.

FlexLoRA lives in its own module (it accumulates dense updates, not factors).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from server.aggregation.base import Strategy
from server.aggregation.keys import Part, classify
from server.aggregation.rules import Inspected, PartialSums
from server.aggregation.update import ClientUpdate


class FedIT(Strategy):
    """FedAvg of A and B separately (equal ranks only): avg(B) avg(A) != avg(B A)."""

    name: ClassVar[str] = "fedit"
    equal_ranks: ClassVar[bool] = True


class FFA(Strategy):
    """FFA-LoRA: A frozen at the shared round-0 draw, only B uploaded and averaged.

    Clients receive A too (they need it to train and it is not private); it is carried over
    unchanged from the previous global adapter.
    """

    name: ClassVar[str] = "ffa"
    equal_ranks: ClassVar[bool] = True
    shared_parts: ClassVar[tuple[Part, ...]] = ("lora_B",)
    received_parts: ClassVar[tuple[Part, ...]] = ("lora_A", "lora_B")


class ZeroPad(Strategy):
    """Zero-pad every client to rank R and take the p_k-weighted mean: slice i shrinks by P_i."""

    name: ClassVar[str] = "zeropad"

    def divisor(self, acc: PartialSums, key: str, module: str) -> torch.Tensor:
        """Every covered slice is divided by the total sample count."""
        cov = acc.coverage_tensor()
        return torch.where(cov > 0, float(acc.total_samples), 0.0)


class HetLoRA(Strategy):
    """HetLoRA's sparsity-weighted aggregation: zero-padding with per-module client weights
    ||s_k B_k A_k||_F / Z (no n_k, as in the paper). Shared extras still use p_k.

    The norm is floored at 1e-12 so that an all-zero round (e.g. B still 0) degrades to an
    unweighted mean instead of dividing by zero.
    """

    name: ClassVar[str] = "hetlora"
    _FLOOR: ClassVar[float] = 1e-12

    def fold_weights(self, update: ClientUpdate) -> dict[str, float] | None:
        """Weights differ per module: always use :meth:`coefficients`."""
        return None

    def coefficients(
        self, update: ClientUpdate, info: Inspected
    ) -> tuple[dict[str, float], dict[str, float]]:
        """Per-module norm weights for A/B (folded), n_k for extras."""
        s = float(update.scale)
        coeffs: dict[str, float] = {}
        den: dict[str, float] = {}
        for key, part in info.parts.items():
            if part == "extra":
                coeffs[key] = float(update.num_samples)
                continue
            _, module = classify(key)
            if module not in den:
                a = update.tensors[module + ".lora_A.weight"].float()
                b = update.tensors[module + ".lora_B.weight"].float()
                # ||B A||_F^2 = <A A^T, B^T B>: r x r Gram matrices no d_out x d_in product.
                sq = float(((a @ a.T) * (b.T @ b)).sum().clamp_min(0))
                den[module] = max(s * math.sqrt(sq), self._FLOOR)
            coeffs[key] = den[module] * math.sqrt(s)
        return coeffs, den

    def divisor(self, acc: PartialSums, key: str, module: str) -> torch.Tensor:
        """Every covered slice of ``module`` is divided by Z = sum of that module's weights."""
        cov = acc.coverage_tensor()
        z = acc.denominator(module)
        return torch.where(cov > 0, float(z), 0.0)
