"""Adapter "parts": classifying peft state-dict keys, and the safetensors update format.

A part is what a federated strategy shares, keeps private or freezes: ``lora_A``, ``lora_B``,
``vera_lambda_d``, ``vera_lambda_b`` or ``extra`` (any other trainable tensor peft saves, such as
a classifier head in ``modules_to_save``). Keys are the ones ``get_peft_model_state_dict``
returns, without the adapter name, e.g. ``base_model.model.fc1.lora_A.weight``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
from safetensors.torch import load as st_load

from client_sdk.trainer_settings import ADAPTER_TYPES

PARTS: frozenset[str] = frozenset({"lora_A", "lora_B", "vera_lambda_d", "vera_lambda_b", "extra"})

# Suffix of a state-dict key -> part. Order does not matter: the suffixes are disjoint.
_SUFFIXES: dict[str, str] = {
    ".lora_A.weight": "lora_A",
    ".lora_B.weight": "lora_B",
    ".vera_lambda_d": "vera_lambda_d",
    ".vera_lambda_b": "vera_lambda_b",
}

# Parts that exist for each adapter type; "extra" exists for both when the task has a head.
PARTS_BY_ADAPTER: dict[str, frozenset[str]] = {
    "lora": frozenset({"lora_A", "lora_B", "extra"}),
    "vera": frozenset({"vera_lambda_d", "vera_lambda_b", "extra"}),
}


def part_of(key: str) -> str:
    """The part a peft state-dict key belongs to (``extra`` when no adapter suffix matches)."""
    for suffix, part in _SUFFIXES.items():
        if key.endswith(suffix):
            return part
    return "extra"


def module_of(key: str) -> str | None:
    """The adapted module path of an adapter key, or None for an ``extra`` key."""
    for suffix in _SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)]
    return None


def check_parts(name: str, parts: Iterable[str], adapter_type: str) -> frozenset[str]:
    """Validate a set of part names against the adapter type; returns it as a frozenset."""
    parts = frozenset(parts)
    unknown = sorted(parts - PARTS)
    if unknown:
        raise ValueError(f"{name}: unknown part(s) {unknown}; known parts: {sorted(PARTS)}")
    foreign = sorted(parts - PARTS_BY_ADAPTER[adapter_type])
    if foreign:
        raise ValueError(
            f"{name}: part(s) {foreign} do not exist for adapter_type={adapter_type!r} "
            f"(it has {sorted(PARTS_BY_ADAPTER[adapter_type])})"
        )
    return parts


def check_tensors(
    label: str, tensors: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Size]
) -> None:
    """Raise a clear error when ``tensors`` has keys or shapes the model does not have.

    peft's non-strict load drops unknown keys silently and reports a shape mismatch with the
    internal (adapter-named) key; both hide protocol bugs such as a slice for the wrong rank.
    """
    unknown = sorted(set(tensors) - set(expected))
    if unknown:
        shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise ValueError(
            f"{label}: {len(unknown)} key(s) the adapter does not have: {shown}; "
            f"expected keys look like {next(iter(expected), '<none>')!r}"
        )
    for key, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{label}: {key!r} is a {type(tensor).__name__}, not a torch.Tensor")
        if tuple(tensor.shape) != tuple(expected[key]):
            raise ValueError(
                f"{label}: {key!r} has shape {tuple(tensor.shape)}, the adapter expects "
                f"{tuple(expected[key])} (wrong rank, or a tensor for another model?)"
            )
        if not torch.isfinite(tensor).all():
            raise ValueError(f"{label}: {key!r} contains NaN or infinite values")


def encode_update(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bytes:
    """Serialise tensors as safetensors bytes: float32, contiguous, little-endian, sorted keys.

    Written by hand (the format is an 8-byte header length, a JSON header, then raw data)
    because safetensors' own writer orders the metadata map differently from call to call:
    identical tensors must give identical bytes, so a resent update has the same sha256.
    float32 whatever the training dtype: the server accumulates in float32 anyway.
    """
    header: dict[str, object] = {"__metadata__": {k: str(metadata[k]) for k in sorted(metadata)}}
    chunks: list[bytes] = []
    offset = 0
    for key in sorted(tensors):
        array = tensors[key].detach().to("cpu", torch.float32).contiguous().numpy()
        raw = array.astype("<f4", copy=False).tobytes()
        header[key] = {
            "dtype": "F32",
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the spec pads the header with spaces to 8-byte alignment
    return len(text).to_bytes(8, "little") + text + b"".join(chunks)


def decode_update(data: bytes) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Parse safetensors bytes into (tensors, metadata); the inverse of :func:`encode_update`."""
    return st_load(data), _read_metadata(data)


def _read_metadata(data: bytes) -> dict[str, str]:
    # safetensors.torch.load drops the metadata; the header is 8 bytes of little-endian length
    # followed by JSON, documented in the safetensors format spec.
    if len(data) < 8:
        raise ValueError("not a safetensors payload: shorter than its 8-byte header length")
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    return dict(header.get("__metadata__", {}))


@dataclass(frozen=True)
class AdapterLayout:
    """The adapter's state-dict layout, rank-independent, as a coordinator's job spec needs it.

    ``modules`` maps each adapted module, as its path appears in ``get_peft_model_state_dict``
    keys (e.g. ``base_model.model.fc1``), to ``(in_features, out_features)``. ``extra`` maps the
    keys of the other trainable tensors (the head in ``modules_to_save``) to their shapes.
    """

    modules: dict[str, tuple[int, int]]
    extra: dict[str, tuple[int, ...]]

    def shapes(self, rank: int, adapter_type: str = "lora") -> dict[str, tuple[int, ...]]:
        """Every state-dict key and shape of an adapter of this ``rank`` (LoRA or VeRA)."""
        out: dict[str, tuple[int, ...]] = {}
        for module, (d_in, d_out) in self.modules.items():
            if adapter_type == "lora":
                out[f"{module}.lora_A.weight"] = (rank, d_in)
                out[f"{module}.lora_B.weight"] = (d_out, rank)
            elif adapter_type == "vera":
                out[f"{module}.vera_lambda_b"] = (d_out,)
                out[f"{module}.vera_lambda_d"] = (rank,)
            else:
                raise ValueError(f"adapter_type must be one of {sorted(ADAPTER_TYPES)}")
        out.update(self.extra)
        return out

    def to_dict(self) -> dict[str, dict[str, list[int]]]:
        """JSON-ready form for a job spec: ``{"modules": {path: [in, out]}, "extra": {...}}``."""
        return {
            "modules": {k: list(v) for k, v in self.modules.items()},
            "extra": {k: list(v) for k, v in self.extra.items()},
        }


@dataclass
class TrainResult:
    """What one local training round produced.

    ``update`` is safetensors bytes holding exactly the shared parts (float32, contiguous) with
    metadata ``rank``, ``lora_alpha``, ``use_rslora``, ``adapter_type``, ``n_samples`` and
    ``parts``. ``private`` holds the trainable, non-shared, non-frozen tensors to keep on the
    device (e.g. FedSA's B and head), on the CPU.
    """

    update: bytes
    private: dict[str, torch.Tensor]
    n_samples: int
    metrics: dict[str, float] = field(default_factory=dict)
