"""What one client sends back after a round, and the LoRA scale it was trained with."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from server.aggregation.errors import AggregationError


def lora_scale(rank: int, lora_alpha: float, *, rslora: bool = False) -> float:
    """The factor s in dW = s * B A: ``alpha / r`` (LoRA) or ``alpha / sqrt(r)`` (rsLoRA)."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise AggregationError(f"rank must be a positive integer, got {rank!r}")
    if not math.isfinite(lora_alpha) or lora_alpha <= 0:
        raise AggregationError(f"lora_alpha must be a positive finite number, got {lora_alpha!r}")
    return float(lora_alpha) / (math.sqrt(rank) if rslora else rank)


@dataclass
class ClientUpdate:
    """One client's upload for one round.

    ``tensors`` uses peft state-dict keys (``<module>.lora_A.weight`` of shape (r, d_in),
    ``<module>.lora_B.weight`` of shape (d_out, r), VeRA's ``<module>.vera_lambda_d``, and any
    shared non-LoRA tensor under its own name). The rank is read from the shapes. ``scale`` is the
    LoRA scale s the client trained with (see :func:`lora_scale`); ``num_samples`` is n_k.
    """

    tensors: dict[str, torch.Tensor]
    num_samples: int
    scale: float = 1.0
    client_id: str | None = None

    def __post_init__(self) -> None:
        check_update_header(self)


def check_update_header(update: ClientUpdate) -> None:
    """Check the scalar fields (run again at aggregation time: dataclasses are mutable)."""
    who = update.client_id
    n = update.num_samples
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise AggregationError(f"num_samples must be an integer >= 1, got {n!r}", client_id=who)
    s = update.scale
    if isinstance(s, bool) or not isinstance(s, int | float) or not math.isfinite(s) or s <= 0:
        raise AggregationError(f"scale must be a positive finite number, got {s!r}", client_id=who)
    if not isinstance(update.tensors, dict) or not update.tensors:
        raise AggregationError("the update holds no tensors", client_id=who)
