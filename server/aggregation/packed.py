"""An adapter whose tensors are consecutive views of one flat buffer.

Folding an adapter tensor by tensor is bound by per-call overhead, not memory bandwidth: an
adapter is dozens of small tensors. A :class:`PackedTensors` is a read-only ``dict`` that also
holds the flat buffer behind its views (and its signature, computed once), so the accumulator
folds it with one add and skips the per-tensor structural checks for a layout it has already
accepted. ``server.tensors.load_adapter`` returns one; any plain ``dict`` still works.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, NoReturn

import torch

_INTERNED_MAX = 4096


class Signature(tuple[tuple[str, torch.Size, torch.dtype], ...]):
    """Keys, shapes and dtypes of an update, in order, hashed once.

    It keys two dict lookups per folded update, and hashing a tuple of dozens of shapes on
    each lookup costs more than the rest of the bookkeeping.
    """

    _hash: int

    def __new__(cls, items: Iterable[tuple[str, torch.Size, torch.dtype]]) -> Signature:
        self = super().__new__(cls, items)
        self._hash = tuple.__hash__(self)
        return self

    def __hash__(self) -> int:
        return self._hash


# Equal signatures of different loads share one object, so lookups succeed on identity.
_interned: dict[Signature, Signature] = {}


def _intern(signature: Signature) -> Signature:
    if len(_interned) >= _INTERNED_MAX:
        _interned.clear()
    return _interned.setdefault(signature, signature)


class PackedTensors(dict[str, torch.Tensor]):
    """Read-only ``{key: tensor}`` whose tensors are back-to-back views of ``flat``, in order.

    The views share ``flat``'s memory: in-place changes to values are seen by both, but
    in-place changes to a view's shape (``t_()``, ``resize_()``) are not supported.
    """

    __slots__ = ("flat", "signature")

    def __init__(self, flat: torch.Tensor, shapes: Iterable[tuple[str, Sequence[int]]]) -> None:
        if flat.ndim != 1 or not flat.is_contiguous():
            raise ValueError("flat must be a contiguous 1-D tensor")
        views: dict[str, torch.Tensor] = {}
        start = 0
        for key, shape in shapes:
            if key in views:
                raise ValueError(f"duplicate key {key!r}")
            numel = math.prod(shape)
            views[key] = flat[start : start + numel].view(tuple(shape))
            start += numel
        if start != flat.numel():
            raise ValueError(f"the shapes cover {start} elements but flat has {flat.numel()}")
        super().__init__(views)
        self.flat = flat
        self.signature = _intern(Signature((k, v.shape, flat.dtype) for k, v in views.items()))

    def _read_only(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError("PackedTensors is read-only: copy it with dict(...) to change it")

    __setitem__ = __delitem__ = __ior__ = _read_only
    clear = pop = popitem = setdefault = update = _read_only

    def __reduce__(self) -> tuple[type, tuple[dict[str, torch.Tensor]]]:
        return dict, (dict(self),)
