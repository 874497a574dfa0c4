"""Partial sums of one upload layout, kept flat: one add per update instead of one per tensor.

The accumulator keeps, per distinct upload layout (keys, shapes and dtypes: in practice one
per client rank), one flat float32 buffer with a shaped view per key. A :class:`PackedTensors`
update is folded with one add per run of keys sharing a weight (one add in all for LoRA-only
uploads); any other update with one fused add per weight class over the views. ``drain_into``
moves the sums into the rank-R numerators: when those are themselves a rank-R layout's flat
buffer, with one strided add per run of equally shaped, evenly spaced keys (one in all for a
uniform adapter's A matrices) instead of one per key.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence

import torch

from server.aggregation.keys import SLICE_DIM, Part, tail_shape
from server.aggregation.packed import PackedTensors, Signature


def weight_class(part: Part) -> str:
    """The fold-weight class of an adapter part: A and B share ``"lora"``."""
    return "lora" if part in ("lora_A", "lora_B") else part


# (size, source strides, source offset, target strides, target offset) of one strided add
Run = tuple[tuple[int, ...], tuple[int, ...], int, tuple[int, ...], int]
# a run being built: (key size, source strides, source offsets, target strides, target offsets)
_Pending = tuple[tuple[int, ...], tuple[int, ...], list[int], tuple[int, ...], list[int]]
_PLANS_MAX = 1024
_plans: dict[tuple[Signature, Signature], list[Run] | None] = {}


def _contiguous_strides(shape: Sequence[int]) -> tuple[int, ...]:
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

    def __init__(self, signature: Signature, parts: Mapping[str, Part], rank: int) -> None:
        self.signature = signature
        self.rank = rank
        self.parts = parts
        self._shapes = [(key, shape) for key, shape, _ in signature]
        self._cast = any(dtype != torch.float32 for *_, dtype in signature)
        self.numel = 0
        self._runs: list[tuple[str, int, int]] = []  # (weight class, start, stop), elements
        for key, shape in self._shapes:
            cls, stop = weight_class(parts[key]), self.numel + shape.numel()
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
            keys, views = classes.setdefault(weight_class(self.parts[key]), ([], []))
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

    def drain_into(self, numerator: Callable[[str, Part, torch.Size], torch.Tensor]) -> None:
        """Add every key's sum into its first ``rank`` slices of ``numerator(key, part, shape)``."""
        dsts = []
        for key, view in self.views.items():
            part = self.parts[key]
            num = numerator(key, part, view.shape)
            dim = SLICE_DIM[part]
            dsts.append(num if dim is None else num.narrow(dim, 0, self.rank))
        torch._foreach_add_(dsts, list(self.views.values()))

    def drain_into_sum(self, full: LayoutSum) -> bool:
        """Add every key's sum into its first ``rank`` slices in ``full`` (a rank-R layout of
        the same keys); False, touching nothing, if ``full`` lacks one of them."""
        pair = (self.signature, full.signature)
        if pair not in _plans:
            if len(_plans) >= _PLANS_MAX:
                _plans.clear()
            _plans[pair] = _drain_plan(self, full)
        plan = _plans[pair]
        if plan is None:
            return False
        src, dst = self.buffer, full.buffer
        torch._foreach_add_(
            [dst.as_strided(size, strides, offset) for size, _, _, strides, offset in plan],
            [src.as_strided(size, strides, offset) for size, strides, offset, _, _ in plan],
        )
        return True


def _drain_plan(src: LayoutSum, dst: LayoutSum) -> list[Run] | None:
    """Strided adds that move ``src``'s keys into their leading slices in ``dst``.

    The first ``r`` slices of a rank-R tensor, taken with R's strides at the tensor's offset,
    are exactly where a rank-r sum goes (A: the first r rows; B: the first r columns). Keys of
    the same shape and strides that are evenly spaced in both buffers (every A of a uniform
    adapter, even with B interleaved) become one add with a leading dimension that steps from
    key to key.
    """
    if src.rank > dst.rank:
        return None
    placed, start = {}, 0
    for key, shape in dst._shapes:
        placed[key] = (shape, _contiguous_strides(shape), start)
        start += shape.numel()
    runs: list[_Pending] = []
    latest: dict[tuple[tuple[int, ...], tuple[int, ...]], _Pending] = {}  # by size and strides
    start = 0
    for key, shape in src._shapes:
        if key not in placed:
            return None
        dst_shape, dst_strides, dst_offset = placed[key]
        part = src.parts[key]
        if len(dst_shape) != len(shape) or tail_shape(part, shape) != tail_shape(part, dst_shape):
            return None
        size = tuple(shape)
        run = latest.get((size, dst_strides))
        if run is not None and _extends(run[2], start) and _extends(run[4], dst_offset):
            run[2].append(start)
            run[4].append(dst_offset)
        else:
            run = (size, _contiguous_strides(shape), [start], dst_strides, [dst_offset])
            runs.append(run)
            latest[(size, dst_strides)] = run
        start += shape.numel()
    plan: list[Run] = []
    for size, src_strides, src_offsets, dst_strides, dst_offsets in runs:
        count = len(src_offsets)
        src_step = src_offsets[1] - src_offsets[0] if count > 1 else 0
        dst_step = dst_offsets[1] - dst_offsets[0] if count > 1 else 0
        plan.append(
            (
                (count, *size),
                (src_step, *src_strides),
                src_offsets[0],
                (dst_step, *dst_strides),
                dst_offsets[0],
            )
        )
    return plan


def _extends(offsets: list[int], offset: int) -> bool:
    """Whether ``offset`` continues the increasing, evenly spaced ``offsets``."""
    step = offset - offsets[-1]
    return step > 0 and (len(offsets) < 2 or step == offsets[1] - offsets[0])
