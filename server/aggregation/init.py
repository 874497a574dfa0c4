"""The round-0 global adapter: one seeded draw shared by every client."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch

from server.aggregation.keys import Part, key_for

_VERA_D_INITIAL = 0.1  # peft VeraConfig.d_initial


def initial_tensors(
    modules: Mapping[str, tuple[int, int]],
    parts: Iterable[Part],
    *,
    rank: int,
    seed: int,
    extra: Mapping[str, tuple[int, ...]],
) -> dict[str, torch.Tensor]:
    """Round-0 tensors of the given parts for every module, plus the extras, in float32.

    A is drawn like peft's default LoRA init (kaiming-uniform, a=sqrt(5), on an (r, d_in)
    weight) and B = 0, so dW = 0 at round 0. VeRA: lambda_d = 0.1, lambda_b = 0 (peft).
    Extras are drawn like ``nn.Linear`` (kaiming-uniform weights, here zero biases) rather than
    zeros, because an all-zero classifier head has no gradient signal to break symmetry.
    Modules and extras are drawn in sorted order so the result depends only on the seed.
    """
    gen = torch.Generator().manual_seed(seed)
    wanted = set(parts)
    out: dict[str, torch.Tensor] = {}
    for module in sorted(modules):
        d_in, d_out = modules[module]
        if "lora_A" in wanted:
            a = torch.empty(rank, d_in, dtype=torch.float32)
            torch.nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=gen)
            out[key_for(module, "lora_A")] = a
        if "lora_B" in wanted:
            out[key_for(module, "lora_B")] = torch.zeros(d_out, rank, dtype=torch.float32)
        if "vera_lambda_d" in wanted:
            out[key_for(module, "vera_lambda_d")] = torch.full((rank,), _VERA_D_INITIAL)
        if "vera_lambda_b" in wanted:
            out[key_for(module, "vera_lambda_b")] = torch.zeros(d_out, dtype=torch.float32)
    for name in sorted(extra):
        shape = tuple(extra[name])
        tensor = torch.zeros(shape, dtype=torch.float32)
        if len(shape) >= 2:
            torch.nn.init.kaiming_uniform_(tensor, a=math.sqrt(5), generator=gen)
        out[name] = tensor
    return out
