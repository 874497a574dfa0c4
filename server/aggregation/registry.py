"""Strategies by name, so a job names its aggregation as a string."""

from __future__ import annotations

from typing import Any

from server.aggregation.base import Strategy
from server.aggregation.baselines import FFA, FedIT, HetLoRA, ZeroPad
from server.aggregation.errors import AggregationError
from server.aggregation.fedsa import FedSA, FedSARsLoRA, FedSASharedHead, FedSAVeRA
from server.aggregation.flexlora import FlexLoRA
from server.aggregation.rbla import RBLA, RBLAShrink

_REGISTRY: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (
        RBLA,
        RBLAShrink,
        FedSA,
        FedSASharedHead,
        FedSARsLoRA,
        FedSAVeRA,
        FedIT,
        FFA,
        ZeroPad,
        HetLoRA,
        FlexLoRA,
    )
}


def available_strategies() -> list[str]:
    """Names accepted by :func:`get_strategy`."""
    return list(_REGISTRY)


def get_strategy(name: str, *, r_max: int | None = None, **options: Any) -> Strategy:
    """Build a strategy by name; unknown names or options raise :class:`AggregationError`."""
    cls = _REGISTRY.get(name)
    if cls is None:
        raise AggregationError(
            f"unknown aggregation strategy {name!r}; valid: {', '.join(_REGISTRY)}"
        )
    allowed = cls.option_values
    for key, value in options.items():
        if key not in allowed:
            valid = ", ".join(["r_max", *allowed]) or "r_max"
            raise AggregationError(f"unknown option {key!r} for strategy {name!r}; valid: {valid}")
        values = allowed[key]
        if values is not None and value not in values:
            raise AggregationError(
                f"option {key}={value!r} for strategy {name!r} must be one of {list(values)}"
            )
    return cls(r_max=r_max, **options)
