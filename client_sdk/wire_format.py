"""The bytes adapters travel and are kept in: deterministic float32 safetensors with metadata.

One format for every adapter the client sends, receives or stores: a round's update, the global
adapter the coordinator sends, the private tensors kept on the device, an exported adapter and a
pretrained base's cache file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import torch
from safetensors.torch import load as st_load


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
