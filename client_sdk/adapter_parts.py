"""Adapter "parts": classifying peft state-dict keys, checking tensors, the adapter layout.

A part is what a federated strategy shares, keeps private or freezes: ``lora_A``, ``lora_B``,
``vera_lambda_d``, ``vera_lambda_b`` or ``extra`` (any other trainable tensor peft saves, such as
a classifier head in ``modules_to_save``). Keys are the ones ``get_peft_model_state_dict``
returns, without the adapter name, e.g. ``base_model.model.fc1.lora_A.weight``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

from client_sdk.trainer_settings import ADAPTER_TYPES

PARTS: frozenset[str] = frozenset({"lora_A", "lora_B", "vera_lambda_d", "vera_lambda_b", "extra"})

# Suffix of a state-dict key -> part. Order does not matter: the suffixes are disjoint.
_SUFFIXES: dict[str, str] = {
    ".lora_A.weight": "lora_A",
    ".lora_B.weight": "lora_B",
    ".vera_lambda_d": "vera_lambda_d",
    ".vera_lambda_b": "vera_lambda_b",
}

# Parts that exist for each adapter type; "extra" exists for both when the task has a head.
PARTS_BY_ADAPTER: dict[str, frozenset[str]] = {
    "lora": frozenset({"lora_A", "lora_B", "extra"}),
    "vera": frozenset({"vera_lambda_d", "vera_lambda_b", "extra"}),
}


def part_of(key: str) -> str:
    """The part a peft state-dict key belongs to (``extra`` when no adapter suffix matches)."""
    for suffix, part in _SUFFIXES.items():
        if key.endswith(suffix):
            return part
    return "extra"


def module_of(key: str) -> str | None:
    """The adapted module path of an adapter key, or None for an ``extra`` key."""
    for suffix in _SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)]
    return None


def check_parts(name: str, parts: Iterable[str], adapter_type: str) -> frozenset[str]:
    """Validate a set of part names against the adapter type; returns it as a frozenset."""
    parts = frozenset(parts)
    unknown = sorted(parts - PARTS)
    if unknown:
        raise ValueError(f"{name}: unknown part(s) {unknown}; known parts: {sorted(PARTS)}")
    foreign = sorted(parts - PARTS_BY_ADAPTER[adapter_type])
    if foreign:
        raise ValueError(
            f"{name}: part(s) {foreign} do not exist for adapter_type={adapter_type!r} "
            f"(it has {sorted(PARTS_BY_ADAPTER[adapter_type])})"
        )
    return parts


def check_tensors(
    label: str, tensors: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Size]
) -> None:
    """Raise a clear error when ``tensors`` has keys or shapes the model does not have.

    peft's non-strict load drops unknown keys silently and reports a shape mismatch with the
    internal (adapter-named) key; both hide protocol bugs such as a slice for the wrong rank.
    """
    unknown = sorted(set(tensors) - set(expected))
    if unknown:
        shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise ValueError(
            f"{label}: {len(unknown)} key(s) the adapter does not have: {shown}; "
            f"expected keys look like {next(iter(expected), '<none>')!r}"
        )
    for key, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{label}: {key!r} is a {type(tensor).__name__}, not a torch.Tensor")
        if tuple(tensor.shape) != tuple(expected[key]):
            raise ValueError(
                f"{label}: {key!r} has shape {tuple(tensor.shape)}, the adapter expects "
                f"{tuple(expected[key])} (wrong rank, or a tensor for another model?)"
            )
        if not torch.isfinite(tensor).all():
            raise ValueError(f"{label}: {key!r} contains NaN or infinite values")


@dataclass(frozen=True)
class AdapterLayout:
    """The adapter's state-dict layout, rank-independent, as a coordinator's job spec needs it.

    ``modules`` maps each adapted module, as its path appears in ``get_peft_model_state_dict``
    keys (e.g. ``base_model.model.fc1``), to ``(in_features, out_features)``. ``extra`` maps the
    keys of the other trainable tensors (the head in ``modules_to_save``) to their shapes.
    """

    modules: dict[str, tuple[int, int]]
    extra: dict[str, tuple[int, ...]]

    def shapes(self, rank: int, adapter_type: str = "lora") -> dict[str, tuple[int, ...]]:
        """Every state-dict key and shape of an adapter of this ``rank`` (LoRA or VeRA)."""
        out: dict[str, tuple[int, ...]] = {}
        for module, (d_in, d_out) in self.modules.items():
            if adapter_type == "lora":
                out[f"{module}.lora_A.weight"] = (rank, d_in)
                out[f"{module}.lora_B.weight"] = (d_out, rank)
            elif adapter_type == "vera":
                out[f"{module}.vera_lambda_b"] = (d_out,)
                out[f"{module}.vera_lambda_d"] = (rank,)
            else:
                raise ValueError(f"adapter_type must be one of {sorted(ADAPTER_TYPES)}")
        out.update(self.extra)
        return out

    def to_dict(self) -> dict[str, dict[str, list[int]]]:
        """JSON-ready form for a job spec: ``{"modules": {path: [in, out]}, "extra": {...}}``."""
        return {
            "modules": {k: list(v) for k, v in self.modules.items()},
            "extra": {k: list(v) for k, v in self.extra.items()},
        }
