"""Adapters as bytes and files: safetensors in, float32 torch tensors out."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save


def save_adapter(tensors: dict[str, torch.Tensor]) -> bytes:
    """Serialise an adapter (contiguous CPU copies; safetensors refuses shared storage).

    The bytes depend on the tensors only, so equal adapters have equal SHA-256: the
    metadata is the single ``format`` entry, because safetensors writes several metadata
    entries in an arbitrary order.
    """
    clean = {k: v.detach().to("cpu").contiguous() for k, v in sorted(tensors.items())}
    return save(clean, metadata={"format": "pt"})


def load_adapter(path: Path) -> dict[str, torch.Tensor]:
    """Load every tensor of a safetensors file as float32."""
    return {k: v.float() for k, v in load_file(str(path)).items()}
