"""What the streaming accumulator and the batch checker ask of a strategy, and what they show it.

:class:`StrategyRules` is the part of :class:`~server.aggregation.base.Strategy` that the
accumulator and the validator use; :class:`Inspected` is what the validator found in one
update and :class:`PartialSums` what a strategy reads back from an accumulator. A leaf module:
it imports none of the modules that depend on it, so those import no strategy.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Protocol

import torch

from server.aggregation.keys import Part
from server.aggregation.packed import Signature
from server.aggregation.update import ClientUpdate

Tensors = dict[str, torch.Tensor]


@dataclass
class Inspected:
    """What a structurally valid update contains (``signature``: its keys, shapes, dtypes).

    ``entries`` is its layout (key -> (part, shape without the rank dimension)) and
    ``rank_key`` the first tensor that carries its rank, for error messages.
    """

    rank: int
    entries: dict[str, tuple[Part, tuple[int, ...]]]
    rank_key: str
    signature: Signature = Signature(())

    @functools.cached_property
    def parts(self) -> dict[str, Part]:
        """Key -> part, in upload order."""
        return {key: part for key, (part, _) in self.entries.items()}


class PartialSums(Protocol):
    """What a strategy reads from an accumulator to divide its sums."""

    @property
    def total_samples(self) -> int:
        """num_samples of every update folded in so far."""
        ...

    def coverage_tensor(self) -> torch.Tensor:
        """Per global slice (R,): samples of the clients that have it, float32."""
        ...

    def denominator(self, group: str) -> float:
        """A strategy-specific denominator accumulated under ``group``."""
        ...


class StrategyRules(Protocol):
    """The strategy as the accumulator and the validator see it."""

    @property
    def name(self) -> str:
        """The registered name, in error messages."""
        ...

    @property
    def equal_ranks(self) -> bool:
        """Whether every client of a batch must have one rank."""
        ...

    @property
    def uncovered(self) -> str:
        """What a slice no client has becomes: "keep" (its previous value) or "zero"."""
        ...

    def is_uploaded(self, part: Part) -> bool:
        """Whether clients upload this part of the adapter."""
        ...

    def is_private(self, part: Part) -> bool:
        """Whether this part stays on the device."""
        ...

    def describe_upload(self) -> str:
        """The uploaded parts in words, for error messages."""
        ...

    def fold_weights(self, update: ClientUpdate) -> dict[str, float] | None:
        """Fold coefficient per weight class, or None when they differ per key."""
        ...

    def coefficients(
        self, update: ClientUpdate, info: Inspected
    ) -> tuple[dict[str, float], dict[str, float]]:
        """Per-key fold coefficient and denominator increments."""
        ...

    def divisor(self, acc: PartialSums, key: str, module: str) -> torch.Tensor:
        """Per-slice denominator (R,) for a rank-bearing key."""
        ...

    def previous_share(self, acc: PartialSums) -> torch.Tensor | None:
        """Per-slice weight (R,) of the previous global adapter in the new one."""
        ...

    def finish(self, result: Tensors) -> Tensors:
        """The new global adapter from the averaged one."""
        ...
