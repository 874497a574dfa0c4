"""Streaming aggregation: fold one update at a time into rank-R numerators.

Every strategy in this package is a ratio of sums: a numerator tensor of the global shape
(sum of weighted, scale-folded client tensors, zero where a client lacks a slice) and a
denominator per rank slice. Sums make the accumulator streaming (memory = a few global
adapters, whatever the number of clients) and shardable (partial sums from disjoint client
subsets add up exactly), and the final division happens once, in :meth:`Accumulator.result`.
Updates are first summed per upload layout, flat (``layout_sum``), so that a packed update
(``packed``) costs one add, not one per tensor.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping

import torch

from server.aggregation.errors import AggregationError
from server.aggregation.keys import SLICE_DIM, Part, classify, full_shape, tail_shape
from server.aggregation.layout_sum import LayoutSum
from server.aggregation.packed import Signature
from server.aggregation.rules import Inspected, StrategyRules, Tensors
from server.aggregation.update import ClientUpdate
from server.aggregation.validation import (
    BatchChecker,
    Layout,
    layout_from_previous,
    previous_rank,
)

_COUNTS = "__counts__"  # int64 [num_updates, total_samples]
_COVERAGE = "__coverage__"  # int64 (R,): samples that trained each slice
_NUM = "num::"
_DEN = "den::"
_SUMS_BUDGET = 2  # per-layout sums held before draining, in rank-R numerators


class Accumulator:
    """Partial aggregate of a strategy over some clients.

    Use ``add`` per update, ``merge`` to combine partial aggregates computed elsewhere (e.g.
    restored with ``Strategy.accumulator_from_state``), and ``result`` for the new global
    adapter. Memory is at most three float32 global adapters (the rank-R numerators and the
    per-layout sums) plus O(R) counters, independent of K.
    """

    def __init__(
        self,
        strategy: StrategyRules,
        previous: Mapping[str, torch.Tensor] | None,
        *,
        r_max: int | None,
    ) -> None:
        self.strategy = strategy
        self._previous = dict(previous) if previous else None
        prev_r = previous_rank(self._previous) if self._previous else None
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
        self._samples_by_rank: dict[int, int] = defaultdict(int)
        self._coverage_memo: tuple[tuple[int, int, int], torch.Tensor] | None = None
        # Updates are summed per upload layout first (flat, see layout_sum) and drained into
        # the rank-R numerators before anything reads them; at most _SUMS_BUDGET numerators'
        # worth of elements is held that way.
        self._sums: dict[Signature, LayoutSum] = {}
        self._sums_numel = 0
        # The numerators as one rank-R layout sum (its views are self._num) until they are
        # reshaped (grow) or replaced (load_state): sums drain into it with strided adds.
        self._full: LayoutSum | None = None
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
        self._samples_by_rank[info.rank] += update.num_samples
        self.num_updates += 1
        self.total_samples += update.num_samples

    def _fold(self, update: ClientUpdate, info: Inspected) -> None:
        sums = self._sums.get(info.signature)
        if sums is None:
            sums = self._new_sum(info)
        weights = self.strategy.fold_weights(update)
        if weights is not None:
            sums.add(update.tensors, weights)
            return
        coefficients, den = self.strategy.coefficients(update, info)
        sums.add_per_key(update.tensors, coefficients)
        for group, value in den.items():
            self._den[group] += value

    def _new_sum(self, info: Inspected) -> LayoutSum:
        sums = LayoutSum(info.signature, info.parts, info.rank)
        if self._sums and self._sums_numel + sums.numel > _SUMS_BUDGET * self._full_numel():
            self._drain()
        self._sums[info.signature] = sums
        self._sums_numel += sums.numel
        return sums

    def _full_numel(self) -> int:
        """Elements of a rank-R upload of the current layout."""
        layout = self._checker.layout
        entries = layout.entries.values() if layout is not None else ()
        return sum(math.prod(full_shape(part, tail, self._rank)) for part, tail in entries)

    def _drain(self) -> None:
        """Add the per-layout sums into the rank-R numerators and free them."""
        if not self._num and self._sums:
            # A rank-R layout's sums already have the numerators' shapes: adopt them instead
            # of copying them into fresh memory.
            full = next((s for s in self._sums.values() if s.rank == self._rank), None)
            if full is not None:
                del self._sums[full.signature]
            else:
                full = self._zero_full()
            if full is not None:
                self._full = full
                self._num = dict(full.views)
        for sums in self._sums.values():
            if self._full is None or not sums.drain_into_sum(self._full):
                sums.drain_into(self._numerator)
        self._sums.clear()
        self._sums_numel = 0

    def _zero_full(self) -> LayoutSum | None:
        """Zero rank-R numerators of the current layout, as one layout sum."""
        layout = self._checker.layout
        if layout is None:
            return None
        entries = layout.entries.items()
        signature = Signature(
            (key, torch.Size(full_shape(part, tail, self._rank)), torch.float32)
            for key, (part, tail) in entries
        )
        return LayoutSum(signature, {key: part for key, (part, _) in entries}, self._rank)

    def _numerator(self, key: str, part: Part, shape: torch.Size) -> torch.Tensor:
        num = self._num.get(key)
        if num is None:
            num = torch.zeros(full_shape(part, tail_shape(part, tuple(shape)), self._rank))
            self._num[key] = num
        return num

    def _grow(self, rank: int) -> None:
        self._drain()
        self._full = None
        for key, num in self._num.items():
            dim = SLICE_DIM[classify(key)[0]]
            if dim is not None:
                pad = [0, 0] * (num.ndim - 1 - dim) + [0, rank - self._rank]
                self._num[key] = torch.nn.functional.pad(num, pad)
        self._rank = rank

    # ------------------------------------------------------------------ combining
    def merge(self, other: Accumulator) -> None:
        """Add another partial aggregate (over a disjoint set of clients) into this one."""
        if type(other) is not type(self) or other.strategy.name != self.strategy.name:
            raise AggregationError(
                f"cannot merge a {other.strategy.name!r} accumulator into a "
                f"{self.strategy.name!r} one"
            )
        self._drain()
        other._drain()
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
        for rank, samples in other._samples_by_rank.items():
            self._samples_by_rank[rank] += samples
        self.num_updates += other.num_updates
        self.total_samples += other.total_samples
        if self._checker.layout is None:
            self._checker.layout = other._checker.layout

    def coverage(self) -> list[float]:
        """For each global slice i < R: total num_samples of the added clients that have it."""
        covered, running = [0.0] * self._rank, 0
        for i in range(self._rank - 1, -1, -1):
            running += self._samples_by_rank.get(i + 1, 0)
            covered[i] = float(running)
        return covered

    def coverage_tensor(self) -> torch.Tensor:
        """:meth:`coverage` as a float32 tensor (R,); one object until the sums change."""
        version = (self.num_updates, self.total_samples, self._rank)
        if self._coverage_memo is None or self._coverage_memo[0] != version:
            self._coverage_memo = (version, torch.tensor(self.coverage(), dtype=torch.float32))
        return self._coverage_memo[1]

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
        self._drain()
        out: Tensors = {
            _COUNTS: torch.tensor([self.num_updates, self.total_samples], dtype=torch.int64),
            _COVERAGE: torch.tensor(self.coverage(), dtype=torch.int64),
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
        self._samples_by_rank = _samples_by_rank(coverage)
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
            part, _ = classify(key)
            if not self.strategy.is_uploaded(part):
                return None  # numerators are not uploaded tensors (FlexLoRA's dW)
            entries[key] = (part, tail_shape(part, tuple(num.shape)))
        return Layout(entries=entries, source="the restored partial aggregate") if entries else None

    # ------------------------------------------------------------------ the result
    def result(self) -> Tensors:
        """The new global adapter: rank R, float32, contiguous. Shared tensors that no client
        sent keep their previous values; private ones (FedSA's B and head) are not carried."""
        self._drain()
        self._check_finite_sums()
        out = self._previous_copy()
        share = self.strategy.previous_share(self) if self._previous else None
        # Strategies share one divisor across keys (or modules): prepare each one once.
        prepared: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        for key, num in self._num.items():
            part, module = classify(key)
            dim = SLICE_DIM[part]
            if dim is None:
                out[key] = num / float(self.total_samples)
                continue
            div = self.strategy.divisor(self, key, module)
            if id(div) not in prepared:
                # num is exactly zero on uncovered slices: a clamped divisor yields zeros there.
                tiny = torch.finfo(torch.float32).tiny
                prepared[id(div)] = (div, div.clamp_min(tiny), (div <= 0).nonzero().flatten())
            _, clamped, uncovered = prepared[id(div)]
            shape = [1] * num.ndim
            shape[dim] = self._rank
            res = num / clamped.view(shape)
            if share is not None:
                self._add_previous_share(key, share.view(shape), res)
            if uncovered.numel():
                self._restore_uncovered(key, dim, uncovered, res)
            out[key] = res.contiguous()
        return self.strategy.finish(out)

    def _check_finite_sums(self) -> None:
        # Safety net for updates added with check_finite=False: never publish NaN/inf.
        full = self._full
        if (
            full is not None
            and len(self._num) == len(full.views)
            and math.isfinite(float(full.buffer.sum()))
        ):
            return
        for key, num in self._num.items():
            # One reduction instead of an elementwise mask: any NaN/inf makes the sum
            # non-finite (float32 overflow of finite sums would need values near 1e38).
            if not math.isfinite(float(num.sum())):
                raise AggregationError(
                    "the aggregate is not finite: an update with NaN/inf values was added "
                    "without validation (run validate_batch on the batch to find it)",
                    tensor=key,
                )

    def _previous_copy(self) -> Tensors:
        # Keys with a numerator are recomputed by result(): copy only the other shared ones.
        prev = self._previous or {}
        return {
            k: v.detach().to(torch.float32, copy=True).contiguous()
            for k, v in prev.items()
            if k not in self._num and not self.strategy.is_private(classify(k)[0])
        }

    def _add_previous_share(self, key: str, share: torch.Tensor, res: torch.Tensor) -> None:
        prev = (self._previous or {}).get(key)
        if prev is not None and prev.shape == res.shape:
            res.add_(prev.to(torch.float32) * share)

    def _restore_uncovered(
        self, key: str, dim: int, uncovered: torch.Tensor, res: torch.Tensor
    ) -> None:
        if self.strategy.uncovered != "keep" or not self._previous or key not in self._previous:
            return
        prev = self._previous[key].to(torch.float32)
        res.index_copy_(dim, uncovered, prev.index_select(dim, uncovered))


def _samples_by_rank(coverage: torch.Tensor) -> defaultdict[int, int]:
    """Invert :meth:`Accumulator.coverage`: slice i is covered by every rank above i."""
    covered = [int(v) for v in coverage.tolist()] + [0]
    by_rank: defaultdict[int, int] = defaultdict(int)
    for rank in range(len(covered) - 1, 0, -1):
        samples = covered[rank - 1] - covered[rank]
        if samples < 0 or covered[rank] < 0:
            raise AggregationError("not an accumulator state: coverage increases with the slice")
        if samples:
            by_rank[rank] = samples
    return by_rank
