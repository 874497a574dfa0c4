"""The strategy interface: what clients upload, keep and receive, and how updates combine.

Conventions shared by every strategy:

* The global adapter is stored *folded* (scale 1): A' = sqrt(s) A, B' = sqrt(s) B, so that
  dW = B' A' whatever the client's scale s. ``distribute`` unfolds for the receiving client.
  VeRA's shared vector enters dW linearly, so it is folded with s itself (lambda_d' = s lambda_d).
* The global adapter has rank R (``r_max``). Client k contributes slices [0, r_k).
* Weights are n_k (p_k = n_k / sum n); shared non-LoRA tensors get the plain weighted mean.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar, Literal

import torch

from server.aggregation.accumulator import Accumulator
from server.aggregation.errors import AggregationError
from server.aggregation.init import initial_tensors
from server.aggregation.keys import ADAPTER_PARTS, SLICE_DIM, Part, classify, key_for
from server.aggregation.rules import Inspected, PartialSums, Tensors
from server.aggregation.update import ClientUpdate
from server.aggregation.validation import previous_rank, validate_batch

_EMPTY: Mapping[str, tuple[int, ...]] = {}


class Strategy:
    """Base class; subclasses set the class attributes and override the hooks they change."""

    name: ClassVar[str]
    use_rslora: ClassVar[bool] = False
    adapter_type: ClassVar[Literal["lora", "vera"]] = "lora"
    shares_extra: ClassVar[bool] = True
    #: adapter parts uploaded and averaged
    shared_parts: ClassVar[tuple[Part, ...]] = ("lora_A", "lora_B")
    #: adapter parts that never leave the device
    private_parts: ClassVar[tuple[Part, ...]] = ()
    #: adapter parts a client receives from ``distribute``
    received_parts: ClassVar[tuple[Part, ...]] = ("lora_A", "lora_B")
    equal_ranks: ClassVar[bool] = False
    #: option name -> allowed values (None: any)
    option_values: ClassVar[dict[str, tuple[Any, ...] | None]] = {"uncovered": ("keep", "zero")}

    def __init__(self, *, r_max: int | None = None, uncovered: str = "keep") -> None:
        if r_max is not None and (
            isinstance(r_max, bool) or not isinstance(r_max, int) or r_max < 1
        ):
            raise AggregationError(f"r_max must be a positive integer, got {r_max!r}")
        self.r_max = r_max
        #: what a slice no client has this round becomes: previous value ("keep") or 0 ("zero")
        self.uncovered = uncovered

    def __repr__(self) -> str:
        return f"{type(self).__name__}(r_max={self.r_max!r}, uncovered={self.uncovered!r})"

    # ------------------------------------------------------------------ contracts
    def is_uploaded(self, part: Part) -> bool:
        """Whether clients upload this part of the adapter."""
        return part in self.shared_parts or (part == "extra" and self.shares_extra)

    def is_private(self, part: Part) -> bool:
        """Whether this part stays on the device (never uploaded nor received)."""
        return part in self.private_parts or (part == "extra" and not self.shares_extra)

    def describe_upload(self) -> str:
        """Human-readable list of uploaded parts, for error messages."""
        return ", ".join(
            list(self.shared_parts) + (["shared non-LoRA tensors"] if self.shares_extra else [])
        )

    def upload_spec(
        self,
        modules: Mapping[str, tuple[int, int]],
        rank: int,
        extra: Mapping[str, tuple[int, ...]] = _EMPTY,
    ) -> dict[str, tuple[int, ...]]:
        """The exact key -> shape map a client of ``rank`` must upload."""
        spec = self._spec(modules, self._check_rank(rank), self.shared_parts)
        if self.shares_extra:
            spec.update({k: tuple(v) for k, v in extra.items()})
        return spec

    def private_spec(
        self,
        modules: Mapping[str, tuple[int, int]],
        rank: int,
        extra: Mapping[str, tuple[int, ...]] = _EMPTY,
    ) -> dict[str, tuple[int, ...]]:
        """Key -> shape of what the client keeps on the device between rounds."""
        spec = self._spec(modules, self._check_rank(rank), self.private_parts)
        if not self.shares_extra:
            spec.update({k: tuple(v) for k, v in extra.items()})
        return spec

    def _spec(
        self, modules: Mapping[str, tuple[int, int]], rank: int, parts: Iterable[Part]
    ) -> dict[str, tuple[int, ...]]:
        shapes: dict[Part, Any] = {
            "lora_A": lambda d_in, d_out: (rank, d_in),
            "lora_B": lambda d_in, d_out: (d_out, rank),
            "vera_lambda_d": lambda d_in, d_out: (rank,),
            "vera_lambda_b": lambda d_in, d_out: (d_out,),
        }
        return {
            key_for(m, part): shapes[part](int(d_in), int(d_out))
            for m, (d_in, d_out) in modules.items()
            for part in parts
        }

    def _check_rank(self, rank: int) -> int:
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise AggregationError(f"rank must be a positive integer, got {rank!r}")
        if self.r_max is not None and rank > self.r_max:
            raise AggregationError(f"rank {rank} exceeds r_max={self.r_max}")
        return rank

    def initial_adapter(
        self,
        modules: Mapping[str, tuple[int, int]],
        *,
        rank: int,
        seed: int,
        extra: Mapping[str, tuple[int, ...]] = _EMPTY,
    ) -> Tensors:
        """The round-0 global adapter at rank ``rank`` (= R): full state, float32, seeded."""
        parts = ADAPTER_PARTS[self.adapter_type]
        return initial_tensors(modules, parts, rank=self._check_rank(rank), seed=seed, extra=extra)

    # ------------------------------------------------------------------ aggregation
    def accumulator(self, previous: Mapping[str, torch.Tensor] | None = None) -> Accumulator:
        """An empty streaming accumulator on top of ``previous`` (the current global adapter)."""
        return Accumulator(self, previous, r_max=self.r_max)

    def accumulator_from_state(
        self,
        state: Mapping[str, torch.Tensor],
        previous: Mapping[str, torch.Tensor] | None = None,
    ) -> Accumulator:
        """Rebuild an accumulator from ``Accumulator.state()`` (e.g. loaded with safetensors)."""
        acc = self.accumulator(previous)
        acc.load_state(state)
        return acc

    def aggregate(
        self,
        updates: Sequence[ClientUpdate],
        previous: Mapping[str, torch.Tensor] | None = None,
    ) -> Tensors:
        """One-shot convenience: validate the batch, fold every update, return the result."""
        validate_batch(self, self.r_max, updates, previous)
        acc = self.accumulator(previous)
        for update in updates:
            acc.add(update)
        return acc.result()

    # ------------------------------------------------------------------ hooks
    def fold_weights(self, update: ClientUpdate) -> dict[str, float] | None:
        """Fold coefficient per weight class ("lora": A and B, "vera_lambda_d", "extra"), or None
        when coefficients differ per key (then :meth:`coefficients` is used)."""
        n, s = float(update.num_samples), float(update.scale)
        return {"lora": n * math.sqrt(s), "vera_lambda_d": n * s, "extra": n}

    def coefficients(
        self, update: ClientUpdate, info: Inspected
    ) -> tuple[dict[str, float], dict[str, float]]:
        """Per-key fold coefficient (weight x scale fold) and denominator increments."""
        n, s = float(update.num_samples), float(update.scale)
        fold = {
            "lora_A": n * math.sqrt(s),
            "lora_B": n * math.sqrt(s),
            "vera_lambda_d": n * s,
            "extra": n,
        }
        return {key: fold[part] for key, part in info.parts.items()}, {}

    def divisor(self, acc: PartialSums, key: str, module: str) -> torch.Tensor:
        """Per-slice denominator (R,) for a rank-bearing key; 0 marks an uncovered slice.

        Default (RBLA rule): slice i is divided by the samples of the clients that have it.
        """
        return acc.coverage_tensor()

    def previous_share(self, acc: PartialSums) -> torch.Tensor | None:
        """Per-slice weight (R,) of the previous global adapter in the new one, added to
        ``numerator / divisor`` for every rank-bearing key; None (the default): no share."""
        return None

    def finish(self, result: Tensors) -> Tensors:
        """The new global adapter from the averaged one (default: as it is). Called once per
        result, on whole modules (a sharded round's module groups hold A and B together)."""
        return result

    # ------------------------------------------------------------------ distribution
    def distribute(
        self, global_adapter: Mapping[str, torch.Tensor], rank: int, scale: float
    ) -> Tensors:
        """The tensors a client of ``rank`` and ``scale`` receives: its first ``rank`` slices of
        the received parts, unfolded to its scale, plus shared extras; contiguous float32."""
        rank = self._check_rank(rank)
        if not math.isfinite(scale) or scale <= 0:
            raise AggregationError(f"scale must be a positive finite number, got {scale!r}")
        global_r = previous_rank(global_adapter)
        if global_r is not None and rank > global_r:
            raise AggregationError(f"rank {rank} exceeds the global adapter's rank {global_r}")
        unfold = {"lora_A": math.sqrt(scale), "lora_B": math.sqrt(scale), "vera_lambda_d": scale}
        out: Tensors = {}
        for key, tensor in global_adapter.items():
            part, _ = classify(key)
            if part == "extra":
                if self.shares_extra:
                    out[key] = tensor.to(torch.float32, copy=True).contiguous()
                continue
            if part not in self.received_parts:
                continue
            dim = SLICE_DIM[part]
            head = tensor.narrow(dim, 0, rank) if dim is not None else tensor
            out[key] = (head.to(torch.float32) / unfold[part]).contiguous()
        return out


__all__ = ["Strategy"]
