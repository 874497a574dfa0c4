"""The local training loop and the observation pass, for every task type, over batches.

A batch is a dict of tensors from a :class:`~client_sdk.text_data.LocalDataset`: the model's
keyword inputs (``inputs`` for the built-in MLPs; ``input_ids`` and ``attention_mask`` for
Hugging Face models) plus ``labels``. The loss fits the task type:

* ``SEQ_CLS``: cross-entropy of the class logits against ``labels`` (N,);
* ``CAUSAL_LM``: next-token cross-entropy, logits at t against ``labels`` at t + 1, where
  ``labels`` is -100 on the prompt and the padding (those positions carry no loss).

Only torch: no peft, no transformers.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn import functional as F

from client_sdk.text_data import IGNORE_INDEX
from client_sdk.trainer_settings import TrainSettings

if TYPE_CHECKING:
    from client_sdk.text_data import LocalDataset


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else is passed to torch.device."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype for ``precision`` (auto, fp32, bf16, fp16) on ``device``.

    ``auto`` is bf16 on a CUDA device that supports it, fp16 on an older one, and none
    (full fp32) on the CPU, where autocast is slower than fp32 for these models.
    """
    if precision == "fp32" or device.type != "cuda":
        return None
    if precision == "bf16" or (precision == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def logits_of(output: Any) -> torch.Tensor:
    """The logits of a model output (a tensor, or a Hugging Face output with ``logits``)."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    raise TypeError(f"model returned {type(output).__name__}; expected logits")


@dataclass
class Observation:
    """Per-sample losses of one pass (and, for a classifier, whether each was right)."""

    losses: torch.Tensor
    correct: torch.Tensor | None

    def metrics(self, prefix: str = "") -> dict[str, float]:
        """``loss`` (mean per sample), ``accuracy`` (classifiers) and ``n_samples``."""
        out = {f"{prefix}loss": float(self.losses.mean()), f"{prefix}n_samples": len(self.losses)}
        if self.correct is not None:
            out[f"{prefix}accuracy"] = float(self.correct.float().mean())
        return {k: float(v) for k, v in out.items()}


def _forward(
    model: nn.Module, batch: dict[str, torch.Tensor], task_type: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(per-item losses, per-item weights, per-sample correctness or None) for one batch.

    Items are samples for a classifier and label tokens for a causal LM, so the batch loss is
    ``losses.sum() / weights.sum()`` either way.
    """
    features = {k: v for k, v in batch.items() if k != "labels"}
    labels = batch["labels"]
    logits = logits_of(model(**features)).float()
    if task_type == "SEQ_CLS":
        losses = F.cross_entropy(logits, labels, reduction="none")
        return losses, torch.ones_like(losses), logits.argmax(dim=-1) == labels
    shifted = labels[:, 1:]
    losses = F.cross_entropy(
        logits[:, :-1].transpose(1, 2), shifted, ignore_index=IGNORE_INDEX, reduction="none"
    )
    return losses, (shifted != IGNORE_INDEX).to(losses.dtype), None


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@torch.no_grad()
def observe(
    model: nn.Module,
    data: LocalDataset,
    task_type: str,
    *,
    batch_size: int = 64,
    device: torch.device,
    precision: str = "auto",
) -> Observation:
    """One pass in eval mode without gradients: per-sample losses (token-mean for a causal LM)."""
    was_training = model.training
    model.eval()
    losses, correct = [], []
    try:
        for batch in data.batches(batch_size, seed=None):
            with _autocast(device, precision):
                item_losses, weights, right = _forward(model, _to(batch, device), task_type)
            if item_losses.dim() == 2:  # tokens: mean over each sample's label tokens
                item_losses = item_losses.sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
            losses.append(item_losses.cpu())
            if right is not None:
                correct.append(right.cpu())
    finally:
        model.train(was_training)
    return Observation(torch.cat(losses), torch.cat(correct) if correct else None)


def total_steps(n_samples: int, settings: TrainSettings) -> int:
    """Optimiser steps of one round: ``max_steps``, or ``epochs`` passes of accumulated batches."""
    if settings.max_steps is not None:
        return settings.max_steps
    per_epoch = math.ceil(
        math.ceil(n_samples / settings.batch_size) / settings.gradient_accumulation_steps
    )
    return (settings.epochs or 1) * per_epoch


def fit(
    model: nn.Module,
    data: LocalDataset,
    task_type: str,
    settings: TrainSettings,
    *,
    device: torch.device,
    precision: str = "auto",
    on_step: Callable[[int, int], None] | None = None,
) -> tuple[float, int]:
    """Train ``model``'s trainable parameters in place; returns (mean train loss, steps).

    Every ``settings.gradient_accumulation_steps`` batches make one optimiser step (gradients summed
    with each batch weighted by its share of the step's items). Batches are reshuffled every
    pass from ``settings.seed``. Raises FloatingPointError when the loss is not finite.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: every trainable part is frozen")
    optimizer = _make_optimizer(params, settings)
    scaler = torch.amp.GradScaler(
        device.type, enabled=autocast_dtype(device, precision) == torch.float16
    )
    total = total_steps(len(data), settings)
    loss_sum = torch.zeros((), device=device)  # on the device: no sync per step
    weight_sum = torch.zeros((), device=device)
    step = 0
    model.train()
    groups = _step_groups(data, settings)
    while step < total:
        group = next(groups)
        step_weight = sum(float(w) for _, w in group)
        for batch, _ in group:
            with _autocast(device, precision):
                losses, weights, _ = _forward(model, _to(batch, device), task_type)
            torch.autograd.backward(scaler.scale(losses.sum() / step_weight))
            loss_sum += losses.detach().sum()
            weight_sum += weights.sum()
        if settings.max_grad_norm is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if on_step is not None:
            on_step(step, total)
    model.eval()
    train_loss = float(loss_sum) / max(float(weight_sum), 1.0)
    if not math.isfinite(train_loss):
        raise FloatingPointError(f"training diverged (train_loss={train_loss}); lower lr")
    return train_loss, step


def _step_groups(
    data: LocalDataset, settings: TrainSettings
) -> Iterator[list[tuple[dict[str, torch.Tensor], int]]]:
    """Endless groups of ``gradient_accumulation_steps`` batches with their item counts, one
    pass after another, each pass shuffled from ``settings.seed`` and the pass number."""
    epoch = 0
    while True:
        group: list[tuple[dict[str, torch.Tensor], int]] = []
        for batch in data.batches(settings.batch_size, seed=settings.seed + epoch):
            group.append((batch, _items(batch)))
            if len(group) == settings.gradient_accumulation_steps:
                yield group
                group = []
        if group:
            yield group
        epoch += 1


def _items(batch: dict[str, torch.Tensor]) -> int:
    labels = batch["labels"]
    if labels.dim() == 1:
        return len(labels)
    return max(int((labels[:, 1:] != IGNORE_INDEX).sum()), 1)


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    dtype = autocast_dtype(device, precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _make_optimizer(params: list[nn.Parameter], settings: TrainSettings) -> torch.optim.Optimizer:
    if settings.optimizer == "adam":
        return torch.optim.Adam(params, lr=settings.lr, weight_decay=settings.weight_decay)
    if settings.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    return torch.optim.SGD(
        params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay
    )
