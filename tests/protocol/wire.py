"""Adapters as docs/protocol.md writes them down, with numpy only: what any client implements.

The encoder is written from the document's layout (8-byte little-endian header length, a JSON
header, the raw little-endian data), not with a safetensors library, so the conformance suite
checks that the text is enough to produce an update the coordinator accepts. Downloads are
read with the same rules and cross-checked with the safetensors package.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

import numpy as np
from safetensors.numpy import load as st_load

DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "F64": np.dtype("<f8")}


def encode(
    tensors: Mapping[str, np.ndarray],
    metadata: Mapping[str, str] | None = None,
    *,
    dtype: str = "F32",
) -> bytes:
    """A safetensors file: tensors in sorted key order, contiguous from offset 0."""
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    chunks: list[bytes] = []
    offset = 0
    for key in sorted(tensors):
        raw = np.ascontiguousarray(tensors[key], dtype=DTYPES[dtype]).tobytes()
        header[key] = {
            "dtype": dtype,
            "shape": list(np.shape(tensors[key])),
            "data_offsets": [offset, offset + len(raw)],
        }
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # optional padding to 8 bytes
    return len(text).to_bytes(8, "little") + text + b"".join(chunks)


def header_of(data: bytes) -> dict[str, dict[str, object]]:
    """The JSON header of a safetensors file, without ``__metadata__``."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    header.pop("__metadata__", None)
    return dict(header)


def decode(data: bytes) -> dict[str, np.ndarray]:
    """Tensors of a downloaded adapter, read by the document's rules and checked against the
    safetensors package's own reader."""
    size = int.from_bytes(data[:8], "little")
    base = 8 + size
    tensors = {}
    for key, entry in header_of(data).items():
        begin, end = entry["data_offsets"]  # type: ignore[misc]
        dtype = DTYPES[str(entry["dtype"])]
        shape = tuple(entry["shape"])  # type: ignore[arg-type]
        tensors[key] = np.frombuffer(data[base + begin : base + end], dtype=dtype).reshape(shape)
    reference = st_load(data)
    assert set(reference) == set(tensors)
    for key, tensor in tensors.items():
        np.testing.assert_array_equal(reference[key], tensor)
    return tensors


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
