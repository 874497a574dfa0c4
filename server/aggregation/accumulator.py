"""Streaming aggregation: fold one update at a time into rank-R numerators.

Every strategy in this package is a ratio of sums: a numerator tensor of the global shape
(sum of weighted, scale-folded client tensors, zero where a client lacks a slice) and a
denominator per rank slice. Sums make the accumulator streaming (memory = one global adapter,
whatever the number of clients) and shardable (partial sums from disjoint client subsets add up
exactly), and the final division happens once, in :meth:`Accumulator.result`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from server.aggregation.errors import AggregationError
from server.aggregation.keys import SLICE_DIM, Kind, classify, full_shape, tail_shape
from server.aggregation.update import ClientUpdate
from server.aggregation.validation import (
    BatchChecker,
    Inspected,
    Layout,
    layout_from_previous,
    previous_rank,
)

if TYPE_CHECKING:
    from server.aggregation.base import Strategy

Tensors = dict[str, torch.Tensor]

_COUNTS = "__counts__"  # int64 [num_updates, total_samples]
_COVERAGE = "__coverage__"  # int64 (R,): samples that trained each slice
_NUM = "num::"
_DEN = "den::"


class Accumulator:
    """Partial aggregate of a strategy over some clients.

    Use ``add`` per update, ``merge`` to combine partial aggregates computed elsewhere (e.g.
    restored with ``Strategy.accumulator_from_state``), and ``result`` for the new global
    adapter. Memory is one float32 global adapter plus O(R) counters, independent of K.
    """

    def __init__(
        self, strategy: Strategy, previous: Mapping[str, torch.Tensor] | None, *, r_max: int | None
    ) -> None:
        self.strategy = strategy
        self._previous = dict(previous) if previous else None
        prev_r = previous_rank(strategy, self._previous) if self._previous else None
        if r_max is not None and prev_r is not None and prev_r != r_max:
            raise AggregationError(
                f"the previous global adapter has rank {prev_r} but r_max is {r_max}"
            )
        self._rank = r_max or prev_r or 0
        # Without r_max or a previous adapter there is no bound to enforce; R follows the data.
        self._growable = r_max is None and prev_r is None
        layout = layout_from_previous(strategy, self._previous) if self._previous else None
        self._checker = BatchChecker(strategy, layout, None if self._growable else self._rank)
        self._num: Tensors = {}
        self._den: dict[str, float] = defaultdict(float)
        self._coverage = torch.zeros(self._rank, dtype=torch.int64)
        self._views: dict[tuple[str, int], torch.Tensor] = {}
        # Contiguous per-rank buffers for column-sliced (B) numerators, flushed into _num
        # before anything reads it: adding a (d_out, r) update into the strided view
        # num[:, :r] costs two to three times a contiguous add.
        self._side: dict[tuple[str, int], torch.Tensor] = {}
        self._plans: dict[tuple, dict[str, tuple[list[str], list[torch.Tensor], bool]]] = {}
        self.num_updates = 0
        self.total_samples = 0

    # ------------------------------------------------------------------ folding
    def add(self, update: ClientUpdate, *, check_finite: bool = True) -> None:
        """Validate one update and fold it in (raises :class:`AggregationError`, unchanged).

        ``check_finite=False`` skips the NaN/inf scan (one extra pass over the update) for
        uploads already validated on arrival; ``result`` still refuses a non-finite aggregate.
        """
        info = self._checker.inspect(update, check_finite=check_finite)
        if info.rank > self._rank:
            self._grow(info.rank)
        self._fold(update, info)
        self._coverage[: info.rank] += update.num_samples
        self.num_updates += 1
        self.total_samples += update.num_samples

    def _fold(self, update: ClientUpdate, info: Inspected) -> None:
        weights = self.strategy.fold_weights(update)
        if weights is None or not info.signature:
            self._fold_per_key(update, info)
            return
        plan = self._plans.get(info.signature)
        if plan is None:
            plan = self._plans[info.signature] = self._plan(update, info)
        tensors = update.tensors
        # One fused call per weight class: per-op dispatch overhead, not bandwidth, dominates
        # for adapter-sized tensors, so batching the adds is what gets the fold near memory speed.
        for weight_class, (keys, views, cast) in plan.items():
            srcs = [tensors[k].float() for k in keys] if cast else [tensors[k] for k in keys]
            torch._foreach_add_(views, srcs, alpha=weights[weight_class])

    def _plan(
        self, update: ClientUpdate, info: Inspected
    ) -> dict[str, tuple[list[str], list[torch.Tensor], bool]]:
        plan: dict[str, tuple[list[str], list[torch.Tensor], bool]] = {}
        for key, tensor in update.tensors.items():
            kind = info.kinds[key]
            weight_class = "lora" if kind in ("A", "B") else kind
            keys, views, cast = plan.setdefault(weight_class, ([], [], False))
            keys.append(key)
            views.append(self._view(key, kind, tensor, info.rank))
            plan[weight_class] = (keys, views, cast or tensor.dtype != torch.float32)
        return plan

    def _fold_per_key(self, update: ClientUpdate, info: Inspected) -> None:
        coefficients, den = self.strategy.coefficients(update, info)
        groups: dict[float, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
        for key, tensor in update.tensors.items():
            dst, src = groups.setdefault(coefficients[key], ([], []))
            dst.append(self._view(key, info.kinds[key], tensor, info.rank))
            src.append(tensor if tensor.dtype == torch.float32 else tensor.float())
        for alpha, (dst, src) in groups.items():
            torch._foreach_add_(dst, src, alpha=alpha)
        for group, value in den.items():
            self._den[group] += value

    def _view(self, key: str, kind: Kind, tensor: torch.Tensor, rank: int) -> torch.Tensor:
        cached = self._views.get((key, rank))
        if cached is not None:
            return cached
        if key not in self._num:
            tail = tail_shape(kind, tuple(tensor.shape))
            self._num[key] = torch.zeros(full_shape(kind, tail, self._rank), dtype=torch.float32)
        num = self._num[key]
        dim = SLICE_DIM[kind]
        if dim is None:
            view = num
        elif dim == num.ndim - 1 and rank < self._rank and num.ndim > 1:
            view = self._side[(key, rank)] = torch.zeros(
                full_shape(kind, tail_shape(kind, tuple(num.shape)), rank), dtype=torch.float32
            )
        else:
            view = num.narrow(dim, 0, rank)
        self._views[(key, rank)] = view
        return view

    def _flush(self) -> None:
        """Fold the per-rank B buffers into the rank-R numerators (and zero them for reuse)."""
        for (key, rank), side in self._side.items():
            self._num[key].narrow(side.ndim - 1, 0, rank).add_(side)
            side.zero_()

    def _grow(self, rank: int) -> None:
        self._flush()
        self._side.clear()
        for key, num in self._num.items():
            dim = SLICE_DIM[classify(key)[0]]
            if dim is not None:
                pad = [0, 0] * (num.ndim - 1 - dim) + [0, rank - self._rank]
                self._num[key] = torch.nn.functional.pad(num, pad)
        self._coverage = torch.nn.functional.pad(self._coverage, [0, rank - self._rank])
        self._rank = rank
        self._views.clear()
        self._plans.clear()

    # ------------------------------------------------------------------ combining
    def merge(self, other: Accumulator) -> None:
        """Add another partial aggregate (over a disjoint set of clients) into this one."""
        if type(other) is not type(self) or other.strategy.name != self.strategy.name:
            raise AggregationError(
                f"cannot merge a {other.strategy.name!r} accumulator into a "
                f"{self.strategy.name!r} one"
            )
        self._flush()
        other._flush()
        if other._rank != self._rank:
            if not self._growable or other._rank < self._rank:
                raise AggregationError(
                    f"cannot merge accumulators of rank {other._rank} and {self._rank}"
                )
            self._grow(other._rank)
        for key, num in other._num.items():
            mine = self._num.get(key)
            if mine is None:
                self._num[key] = num.clone()
            elif mine.shape != num.shape:
                raise AggregationError(
                    f"shape {tuple(num.shape)} vs {tuple(mine.shape)} in the partial aggregates",
                    tensor=key,
                )
            else:
                mine.add_(num)
        for group, value in other._den.items():
            self._den[group] += value
        self._coverage += other._coverage
        self.num_updates += other.num_updates
        self.total_samples += other.total_samples
        if self._checker.layout is None:
            self._checker.layout = other._checker.layout

    def coverage(self) -> list[float]:
        """For each global slice i < R: total num_samples of the added clients that have it."""
        return [float(v) for v in self._coverage.tolist()]

    def denominator(self, group: str) -> float:
        """A strategy-specific denominator accumulated under ``group`` (0.0 if never added)."""
        return self._den.get(group, 0.0)

    @property
    def rank(self) -> int:
        """Current global rank R."""
        return self._rank

    # ------------------------------------------------------------------ (de)serialisation
    def state(self) -> Tensors:
        """All partial sums as contiguous float32/int64 tensors (safetensors-saveable).

        The previous global adapter is not included: pass it again to
        ``Strategy.accumulator_from_state`` (or merge into an accumulator that has it).
        """
        self._flush()
        out: Tensors = {
            _COUNTS: torch.tensor([self.num_updates, self.total_samples], dtype=torch.int64),
            _COVERAGE: self._coverage.clone(),
        }
        for key, num in self._num.items():
            out[_NUM + key] = num.clone().contiguous()
        for group, value in self._den.items():
            out[_DEN + group] = torch.tensor(value, dtype=torch.float32)
        return out

    def load_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Replace this (empty) accumulator's sums by ``state`` from :meth:`state`."""
        if self.num_updates:
            raise AggregationError("load_state needs an empty accumulator")
        try:
            counts, coverage = state[_COUNTS], state[_COVERAGE]
        except KeyError as exc:
            raise AggregationError(f"not an accumulator state: {exc.args[0]!r} missing") from None
        rank = int(coverage.numel())
        if rank != self._rank:
            if not self._growable:
                raise AggregationError(f"state has rank {rank} but this job has rank {self._rank}")
            self._rank = rank
        self.num_updates, self.total_samples = (int(v) for v in counts.tolist())
        self._coverage = coverage.to(torch.int64).clone()
        for key, value in state.items():
            if key.startswith(_NUM):
                self._num[key[len(_NUM) :]] = value.to(torch.float32).clone().contiguous()
            elif key.startswith(_DEN):
                self._den[key[len(_DEN) :]] = float(value)
        if self._checker.layout is None:
            self._checker.layout = self._layout_from_numerators()

    def _layout_from_numerators(self) -> Layout | None:
        entries = {}
        for key, num in self._num.items():
            kind, _ = classify(key)
            if not self.strategy.is_uploaded(kind):
                return None  # numerators are not uploaded tensors (FlexLoRA's dW)
            entries[key] = (kind, tail_shape(kind, tuple(num.shape)))
        return Layout(entries=entries, source="the restored partial aggregate") if entries else None

    # ------------------------------------------------------------------ the result
    def result(self) -> Tensors:
        """The new global adapter (rank R, float32, contiguous, previous keys preserved)."""
        self._flush()
        self._check_finite_sums()
        out = self._previous_copy()
        for key, num in self._num.items():
            kind, module = classify(key)
            dim = SLICE_DIM[kind]
            if dim is None:
                out[key] = num / float(self.total_samples)
                continue
            div = self.strategy.divisor(self, key, module)
            shape = [1] * num.ndim
            shape[dim] = self._rank
            # num is exactly zero on uncovered slices, so clamping the divisor yields zeros there.
            res = num / div.clamp_min(torch.finfo(torch.float32).tiny).view(shape)
            self._restore_uncovered(key, dim, div, res)
            out[key] = res.contiguous()
        return out

    def _check_finite_sums(self) -> None:
        # Safety net for updates added with check_finite=False: never publish NaN/inf.
        for key, num in self._num.items():
            # One reduction instead of an elementwise mask: any NaN/inf makes the sum
            # non-finite (float32 overflow of finite sums would need values near 1e38).
            if not math.isfinite(float(num.sum())):
                raise AggregationError(
                    "the aggregate is not finite: an update with NaN/inf values was added "
                    "without validation (run Strategy.validate on the batch to find it)",
                    tensor=key,
                )

    def _previous_copy(self) -> Tensors:
        # Keys with a numerator are recomputed by result(): copy only the others.
        prev = self._previous or {}
        return {
            k: v.detach().to(torch.float32, copy=True).contiguous()
            for k, v in prev.items()
            if k not in self._num
        }

    def _restore_uncovered(self, key: str, dim: int, div: torch.Tensor, res: torch.Tensor) -> None:
        if self.strategy.uncovered != "keep" or not self._previous or key not in self._previous:
            return
        idx = (div <= 0).nonzero().flatten()
        if idx.numel():
            prev = self._previous[key].to(torch.float32)
            res.index_copy_(dim, idx, prev.index_select(dim, idx))
