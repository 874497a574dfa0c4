"""Partial sums of one upload layout, kept flat: one add per update instead of one per tensor.

The accumulator keeps, per distinct upload layout (keys, shapes and dtypes: in practice one
per client rank), one flat float32 buffer with a shaped view per key. A :class:`PackedTensors`
update is folded with one add per run of keys sharing a weight (one add in all for LoRA-only
uploads); any other update with one fused add per weight class over the views. ``drain_into``
moves the sums into the rank-R numerators.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import torch

from server.aggregation.keys import SLICE_DIM, Kind
from server.aggregation.packed import PackedTensors, Signature


def weight_class(kind: Kind) -> str:
    """The fold-weight class of a tensor kind: A and B share ``"lora"``."""
    return "lora" if kind in ("A", "B") else kind


def _contiguous_strides(shape: torch.Size) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


class LayoutSum:
    """Weighted sum of the updates of one layout (all of one rank), as one flat buffer.

    The buffer is created by the first add (a packed update's scaled copy needs no zeroing)
    and its per-key views only when something needs them: a new accumulator per round meets
    each layout afresh, so this set-up is paid every round.
    """

    def __init__(self, signature: Signature, kinds: Mapping[str, Kind], rank: int) -> None:
        self.rank = rank
        self.kinds = kinds
        self._shapes = [(key, shape) for key, shape, _ in signature]
        self._cast = any(dtype != torch.float32 for *_, dtype in signature)
        self.numel = 0
        self._runs: list[tuple[str, int, int]] = []  # (weight class, start, stop), elements
        for key, shape in self._shapes:
            cls, stop = weight_class(kinds[key]), self.numel + shape.numel()
            if self._runs and self._runs[-1][0] == cls:
                self._runs[-1] = (cls, self._runs[-1][1], stop)
            else:
                self._runs.append((cls, self.numel, stop))
            self.numel = stop
        self._buffer: torch.Tensor | None = None

    @property
    def buffer(self) -> torch.Tensor:
        """The flat float32 sums (zeros before the first add)."""
        if self._buffer is None:
            self._buffer = torch.zeros(self.numel, dtype=torch.float32)
        return self._buffer

    @functools.cached_property
    def views(self) -> dict[str, torch.Tensor]:
        """Key -> the sums of that key, shaped like the uploaded tensor."""
        views, start, buffer = {}, 0, self.buffer
        for key, shape in self._shapes:
            # as_strided: a third of the cost of slice + view, and this runs per key per round
            views[key] = buffer.as_strided(shape, _contiguous_strides(shape), start)
            start += shape.numel()
        return views

    @functools.cached_property
    def _classes(self) -> dict[str, tuple[list[str], list[torch.Tensor]]]:
        classes: dict[str, tuple[list[str], list[torch.Tensor]]] = {}
        for key, view in self.views.items():
            keys, views = classes.setdefault(weight_class(self.kinds[key]), ([], []))
            keys.append(key)
            views.append(view)
        return classes

    def add(self, tensors: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> None:
        """Add ``tensors`` (this layout) with one coefficient per weight class."""
        if type(tensors) is PackedTensors:  # same signature, so the same order as the views
            packed = tensors.flat
            if len(self._runs) > 1:
                for cls, start, stop in self._runs:
                    self.buffer[start:stop].add_(packed[start:stop], alpha=weights[cls])
            elif self._buffer is None:  # the scaled copy, in one pass for float32
                alpha = weights[self._runs[0][0]]
                if packed.dtype == torch.float32:
                    self._buffer = packed.mul(alpha)
                else:
                    self._buffer = packed.float().mul_(alpha)
            else:
                self._buffer.add_(packed, alpha=weights[self._runs[0][0]])
            return
        for cls, (keys, views) in self._classes.items():
            srcs = [tensors[k].float() for k in keys] if self._cast else [tensors[k] for k in keys]
            torch._foreach_add_(views, srcs, alpha=weights[cls])

    def add_per_key(
        self, tensors: Mapping[str, torch.Tensor], coefficients: Mapping[str, float]
    ) -> None:
        """Add ``tensors`` (this layout) with one coefficient per key."""
        groups: dict[float, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
        for key, view in self.views.items():
            dst, src = groups.setdefault(coefficients[key], ([], []))
            dst.append(view)
            src.append(tensors[key].float())
        for alpha, (dst, src) in groups.items():
            torch._foreach_add_(dst, src, alpha=alpha)

    def drain_into(self, numerator: Callable[[str, Kind, torch.Size], torch.Tensor]) -> None:
        """Add every key's sum into its first ``rank`` slices of ``numerator(key, kind, shape)``."""
        dsts = []
        for key, view in self.views.items():
            kind = self.kinds[key]
            num = numerator(key, kind, view.shape)
            dim = SLICE_DIM[kind]
            dsts.append(num if dim is None else num.narrow(dim, 0, self.rank))
        torch._foreach_add_(dsts, list(self.views.values()))
