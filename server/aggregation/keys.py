"""peft state-dict key conventions: which part of an adapter a key is, and where its rank lives.

The parts are the API's vocabulary too (a task's ``shared_parts`` and ``frozen_parts``).
"""

from __future__ import annotations

from typing import Literal

Part = Literal["lora_A", "lora_B", "vera_lambda_d", "vera_lambda_b", "extra"]

_SUFFIXES: tuple[tuple[str, Part], ...] = (
    (".lora_A.weight", "lora_A"),
    (".lora_B.weight", "lora_B"),
    (".vera_lambda_d", "vera_lambda_d"),
    (".vera_lambda_b", "vera_lambda_b"),
)
SUFFIX: dict[Part, str] = {part: suffix for suffix, part in _SUFFIXES}

#: The parts of each adapter type (``Strategy.adapter_type``); "extra" is any other tensor.
ADAPTER_PARTS: dict[str, tuple[Part, ...]] = {
    "lora": ("lora_A", "lora_B"),
    "vera": ("vera_lambda_d", "vera_lambda_b"),
}

# Which dimension of a tensor indexes the rank slices (None: the tensor carries no rank).
SLICE_DIM: dict[Part, int | None] = {
    "lora_A": 0,
    "lora_B": 1,
    "vera_lambda_d": 0,
    "vera_lambda_b": None,
    "extra": None,
}


def classify(key: str) -> tuple[Part, str]:
    """Return (part, module path) of a state-dict key; non-adapter tensors are ``"extra"``."""
    for suffix, part in _SUFFIXES:
        if key.endswith(suffix):
            return part, key[: -len(suffix)]
    return "extra", key


def part_of(key: str) -> Part:
    """The part a state-dict key belongs to (``"extra"`` for a non-adapter tensor)."""
    return classify(key)[0]


def key_for(module: str, part: Part) -> str:
    """The peft key of ``part`` for ``module``."""
    return module + SUFFIX[part]


def rank_of(part: Part, shape: tuple[int, ...]) -> int | None:
    """The rank carried by a tensor of this part and shape (None if it carries none)."""
    dim = SLICE_DIM[part]
    return None if dim is None else shape[dim]


def tail_shape(part: Part, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape with the rank dimension removed: what must agree across clients."""
    dim = SLICE_DIM[part]
    if dim is None:
        return tuple(shape)
    return tuple(s for i, s in enumerate(shape) if i != dim)


def full_shape(part: Part, tail: tuple[int, ...], rank: int) -> tuple[int, ...]:
    """Inverse of :func:`tail_shape` for a given rank."""
    dim = SLICE_DIM[part]
    if dim is None:
        return tail
    return tail[:dim] + (rank,) + tail[dim:]


def expected_ndim(part: Part) -> int | None:
    """Tensor rank a key of this part must have (None: any)."""
    return {"lora_A": 2, "lora_B": 2, "vera_lambda_d": 1, "vera_lambda_b": 1}.get(part)
