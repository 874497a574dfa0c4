"""Local training settings of a job, validated without importing torch.

Kept apart from :mod:`client_sdk.trainer` so the thin (torch-free) client can validate the
settings a coordinator sends before it decides whether this device can train at all.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

OPTIMIZERS: frozenset[str] = frozenset({"adam", "adamw", "sgd"})
ADAPTER_TYPES: frozenset[str] = frozenset({"lora", "vera"})


def _is_int(value: object) -> bool:
    # bool is a subclass of int; `epochs=True` is a bug on the caller's side, not 1 epoch.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class AdapterConfig:
    """The adapter one round trains, as the coordinator's task describes it.

    ``lora_alpha`` and ``use_rslora`` give LoRA's scale (alpha / r, or alpha / sqrt(r));
    VeRA ignores both (its lambdas carry the scale).
    """

    rank: int
    lora_alpha: float = 1.0
    use_rslora: bool = False
    adapter_type: str = "lora"

    def __post_init__(self) -> None:
        if not _is_int(self.rank) or self.rank < 1:
            raise ValueError(f"rank must be an integer >= 1, got {self.rank!r}")
        if self.adapter_type not in ADAPTER_TYPES:
            raise ValueError(f"adapter_type must be one of {sorted(ADAPTER_TYPES)}")
        if self.adapter_type == "lora" and not (
            _is_number(self.lora_alpha) and self.lora_alpha > 0
        ):
            raise ValueError(f"lora_alpha must be > 0, got {self.lora_alpha!r}")

    def metadata(self) -> dict[str, str]:
        """The config as safetensors metadata (strings only)."""
        return {
            "rank": str(self.rank),
            "lora_alpha": repr(float(self.lora_alpha)),
            "use_rslora": "true" if self.use_rslora else "false",
            "adapter_type": self.adapter_type,
        }


@dataclass(frozen=True)
class TrainSettings:
    """How one client trains locally in one round.

    ``max_steps``, when set, takes priority over ``epochs``: training runs exactly that many
    optimiser steps, reshuffling the data at every pass (the FedSA paper's "10 local steps").
    Otherwise training runs ``epochs`` full passes over the local data. A step sums the
    gradients of ``gradient_accumulation_steps`` batches (an effective batch that many times
    ``batch_size``, in the memory of one).
    """

    epochs: int | None = 1
    max_steps: int | None = None
    lr: float = 1e-2
    batch_size: int = 16
    gradient_accumulation_steps: int = 1
    optimizer: str = "adam"
    weight_decay: float = 0.0
    momentum: float = 0.0
    max_grad_norm: float | None = None
    eval_batch_size: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs is None and self.max_steps is None:
            raise ValueError("TrainSettings needs epochs >= 1 or max_steps >= 1")
        if self.epochs is not None and (not _is_int(self.epochs) or self.epochs < 1):
            raise ValueError(f"epochs must be an integer >= 1 (or None), got {self.epochs!r}")
        if self.max_steps is not None and (not _is_int(self.max_steps) or self.max_steps < 1):
            raise ValueError(f"max_steps must be an integer >= 1 (or None), got {self.max_steps!r}")
        if not _is_number(self.lr) or not self.lr > 0 or self.lr == float("inf"):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if not _is_int(self.batch_size) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        if not _is_int(self.gradient_accumulation_steps) or self.gradient_accumulation_steps < 1:
            raise ValueError(
                "gradient_accumulation_steps must be an integer >= 1, "
                f"got {self.gradient_accumulation_steps!r}"
            )
        if not _is_int(self.eval_batch_size) or self.eval_batch_size < 1:
            raise ValueError(
                f"eval_batch_size must be an integer >= 1, got {self.eval_batch_size!r}"
            )
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"optimizer must be one of {sorted(OPTIMIZERS)}, got {self.optimizer!r}"
            )
        if not _is_number(self.weight_decay) or self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not _is_number(self.momentum) or not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if self.max_grad_norm is not None and (
            not _is_number(self.max_grad_norm) or not self.max_grad_norm > 0
        ):
            raise ValueError(f"max_grad_norm must be > 0 (or None), got {self.max_grad_norm!r}")
        if not _is_int(self.seed):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainSettings:
        """Build settings from a job spec's mapping; unknown keys are an error, not ignored.

        A typo such as ``"learning_rate"`` silently falling back to the default would train
        with settings nobody chose, so it is rejected with the list of accepted keys.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown training setting(s) {unknown}; accepted keys: {sorted(known)}"
            )
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        """The settings as a plain JSON-serialisable mapping (round-trips through from_dict)."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainSettings:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)
