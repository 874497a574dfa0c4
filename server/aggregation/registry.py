"""Strategies by name, so a job names its aggregation as a string."""

from __future__ import annotations

from typing import Any

from server.aggregation.base import Strategy
from server.aggregation.baselines import FFA, FedIT, HetLoRA, ZeroPad
from server.aggregation.errors import AggregationError
from server.aggregation.fedsa import FedSA, FedSARsLoRA, FedSASharedHead, FedSAVeRA
from server.aggregation.flexlora import FlexLoRA
from server.aggregation.rbla import RBLA, RBLAShrink

_REGISTRY: dict[str, type[Strategy]] = {}


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    """Make ``cls`` available under ``cls.name``: everything the coordinator needs to know
    about it (what clients upload, whether their ranks must be equal) it asks the class."""
    known = _REGISTRY.get(cls.name)
    if known is not None and known is not cls:
        raise AggregationError(f"strategy name {cls.name!r} is taken by {known.__name__}")
    _REGISTRY[cls.name] = cls
    return cls


for _builtin in (
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
):
    register_strategy(_builtin)


def available_strategies() -> list[str]:
    """Names accepted by :func:`get_strategy`."""
    return list(_REGISTRY)


def strategy_class(name: str) -> type[Strategy]:
    """The strategy registered as ``name``; an unknown name raises :class:`AggregationError`."""
    cls = _REGISTRY.get(name)
    if cls is None:
        raise AggregationError(
            f"unknown aggregation strategy {name!r}; valid: {', '.join(_REGISTRY)}"
        )
    return cls


def get_strategy(name: str, *, r_max: int | None = None, **options: Any) -> Strategy:
    """Build a strategy by name; unknown names or options raise :class:`AggregationError`."""
    cls = strategy_class(name)
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
