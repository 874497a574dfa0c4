"""peft state-dict key conventions: which kind of tensor a key is, and where its rank lives."""

from __future__ import annotations

from typing import Literal

Kind = Literal["A", "B", "lambda_d", "lambda_b", "extra"]

_SUFFIXES: tuple[tuple[str, Kind], ...] = (
    (".lora_A.weight", "A"),
    (".lora_B.weight", "B"),
    (".vera_lambda_d", "lambda_d"),
    (".vera_lambda_b", "lambda_b"),
)
SUFFIX: dict[Kind, str] = {kind: suffix for suffix, kind in _SUFFIXES}

# Which dimension of a tensor indexes the rank slices (None: the tensor carries no rank).
SLICE_DIM: dict[Kind, int | None] = {"A": 0, "B": 1, "lambda_d": 0, "lambda_b": None, "extra": None}


def classify(key: str) -> tuple[Kind, str]:
    """Return (kind, module path) of a state-dict key; non-adapter tensors are ``"extra"``."""
    for suffix, kind in _SUFFIXES:
        if key.endswith(suffix):
            return kind, key[: -len(suffix)]
    return "extra", key


def key_for(module: str, kind: Kind) -> str:
    """The peft key of ``kind`` for ``module``."""
    return module + SUFFIX[kind]


def rank_of(kind: Kind, shape: tuple[int, ...]) -> int | None:
    """The rank carried by a tensor of this kind and shape (None if it carries none)."""
    dim = SLICE_DIM[kind]
    return None if dim is None else shape[dim]


def tail_shape(kind: Kind, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape with the rank dimension removed: what must agree across clients."""
    dim = SLICE_DIM[kind]
    if dim is None:
        return tuple(shape)
    return tuple(s for i, s in enumerate(shape) if i != dim)


def full_shape(kind: Kind, tail: tuple[int, ...], rank: int) -> tuple[int, ...]:
    """Inverse of :func:`tail_shape` for a given rank."""
    dim = SLICE_DIM[kind]
    if dim is None:
        return tail
    return tail[:dim] + (rank,) + tail[dim:]


def expected_ndim(kind: Kind) -> int | None:
    """Tensor rank a key of this kind must have (None: any)."""
    return {"A": 2, "B": 2, "lambda_d": 1, "lambda_b": 1}.get(kind)
