"""Aggregation of LoRA updates: RBLA, FedSA-LoRA (+rsLoRA, VeRA) and the baselines.

Pure functions on tensors (no I/O). Typical use::

    strategy = get_strategy("rbla", r_max=16)
    acc = strategy.accumulator(previous_global)
    for update in updates:          # ClientUpdate(tensors, num_samples, scale, client_id)
        acc.add(update)
    new_global = acc.result()
    to_send = strategy.distribute(new_global, rank=4, scale=lora_scale(4, 8.0))

The global adapter is stored scale-folded (A' = sqrt(s) A, B' = sqrt(s) B) at rank R = r_max.
"""

from server.aggregation.accumulator import Accumulator
from server.aggregation.base import Strategy
from server.aggregation.errors import AggregationError
from server.aggregation.registry import (
    available_strategies,
    get_strategy,
    register_strategy,
    strategy_class,
)
from server.aggregation.update import ClientUpdate, lora_scale

__all__ = [
    "Accumulator",
    "AggregationError",
    "ClientUpdate",
    "Strategy",
    "available_strategies",
    "get_strategy",
    "lora_scale",
    "register_strategy",
    "strategy_class",
]
