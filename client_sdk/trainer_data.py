"""Arrays, the training loop and classifier evaluation, shared by the trainer and the tasks.

Only torch and numpy: the tasks import this without pulling in peft or transformers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from client_sdk.trainer_settings import TrainSettings

ArrayLike: TypeAlias = np.ndarray | torch.Tensor | Sequence[Any]
#: Labelled data: inputs ``X`` (first axis = samples) and integer class labels ``y``.
Data: TypeAlias = tuple[ArrayLike, ArrayLike]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; anything else is passed to torch.device."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def as_tensors(data: Data, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(X, y)`` as tensors on ``device``: float X -> float32, integer X kept, y -> int64.

    Integer inputs are kept as integers because they are token ids (text tasks), not features.
    """
    if not isinstance(data, tuple | list) or len(data) != 2:
        raise TypeError("data must be a pair (X, y)")
    x_raw, y_raw = data
    x = x_raw if isinstance(x_raw, torch.Tensor) else torch.as_tensor(np.asarray(x_raw))
    y = y_raw if isinstance(y_raw, torch.Tensor) else torch.as_tensor(np.asarray(y_raw))
    if x.is_floating_point():
        x = x.to(torch.float32)
    elif x.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.bool):
        raise TypeError(f"unsupported input dtype {x.dtype}")
    if y.is_floating_point() or y.dim() != 1:
        raise TypeError(f"y must be 1-D integer class labels, got {y.dtype} {tuple(y.shape)}")
    if len(x) != len(y):
        raise ValueError(f"X has {len(x)} samples but y has {len(y)}")
    if len(y) == 0:
        raise ValueError("data is empty")
    return x.to(device), y.to(device=device, dtype=torch.int64)


def logits_of(output: Any) -> torch.Tensor:
    """The class logits of a model output (a tensor, or a Hugging Face output with ``logits``)."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    raise TypeError(f"model returned {type(output).__name__}; expected logits (N, classes)")


@torch.no_grad()
def per_sample_cross_entropy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample cross-entropy losses and predicted classes, in eval mode, without gradients."""
    was_training = model.training
    model.eval()
    losses, preds = [], []
    try:
        for start in range(0, len(y), batch_size):
            logits = logits_of(model(x[start : start + batch_size])).float()
            yb = y[start : start + batch_size]
            losses.append(F.cross_entropy(logits, yb, reduction="none"))
            preds.append(logits.argmax(dim=1))
    finally:
        model.train(was_training)
    return torch.cat(losses), torch.cat(preds)


def evaluate_classifier(
    model: nn.Module,
    data: Data,
    *,
    batch_size: int = 256,
    device: torch.device | None = None,
) -> dict[str, float]:
    """Mean cross-entropy ``loss``, ``accuracy`` and ``n_samples`` of a classifier on ``data``."""
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x, y = as_tensors(data, device)
    losses, preds = per_sample_cross_entropy(model, x, y, batch_size)
    return {
        "loss": float(losses.mean()),
        "accuracy": float((preds == y).float().mean()),
        "n_samples": float(len(y)),
    }


def fit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    settings: TrainSettings,
    on_step: Callable[[int, int], None] | None = None,
) -> tuple[float, int]:
    """Train ``model``'s trainable parameters in place; returns (mean train loss, steps).

    Cross-entropy on the logits, ``settings.max_steps`` steps or ``settings.epochs`` passes,
    reshuffled every pass; raises FloatingPointError when the loss is not finite.
    ``on_step(done, total)`` is called after every optimiser step (progress display).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: every trainable part is frozen")
    optimizer = _make_optimizer(params, settings)
    n, batch = len(y), settings.batch_size
    # TrainSettings guarantees one of the two is set; max_steps wins when both are.
    total = settings.max_steps or (settings.epochs or 1) * math.ceil(n / batch)
    # Shuffle on the CPU with our own generator: identical order on CPU and CUDA.
    generator = torch.Generator().manual_seed(settings.seed)
    loss_sum = torch.zeros((), device=x.device)
    seen, step = 0, 0
    model.train()
    while step < total:
        order = torch.randperm(n, generator=generator).to(x.device)
        for start in range(0, n, batch):
            idx = order[start : start + batch]
            loss = F.cross_entropy(logits_of(model(x[idx])).float(), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if settings.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
            optimizer.step()
            # Accumulate on the device: .item() every step would sync a GPU each time.
            loss_sum += loss.detach() * len(idx)
            seen += len(idx)
            step += 1
            if on_step is not None:
                on_step(step, total)
            if step >= total:
                break
    model.eval()
    train_loss = float(loss_sum) / seen
    if not math.isfinite(train_loss):
        raise FloatingPointError(f"training diverged (train_loss={train_loss}); lower lr")
    return train_loss, step


def _make_optimizer(params: list[nn.Parameter], settings: TrainSettings) -> torch.optim.Optimizer:
    if settings.optimizer == "adam":
        return torch.optim.Adam(params, lr=settings.lr, weight_decay=settings.weight_decay)
    if settings.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    return torch.optim.SGD(
        params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay
    )
