"""Adapters as bytes and files: safetensors in, float32 torch tensors out."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import torch
from safetensors.torch import save

from server.aggregation.packed import PackedTensors

_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def save_adapter(tensors: dict[str, torch.Tensor]) -> bytes:
    """Serialise an adapter (contiguous CPU copies; safetensors refuses shared storage).

    The bytes depend on the tensors only, so equal adapters have equal SHA-256: the
    metadata is the single ``format`` entry, because safetensors writes several metadata
    entries in an arbitrary order.
    """
    clean = {k: v.detach().to("cpu").contiguous() for k, v in sorted(tensors.items())}
    return save(clean, metadata={"format": "pt"})


def load_adapter(path: Path) -> PackedTensors:
    """Load every tensor of a safetensors file as float32, in file order.

    The data region is read in one go; for a float32 file the tensors are views of it, back to
    back, so the accumulator folds the whole update with one add (other dtypes are converted
    into one float32 buffer). Files are ones the coordinator wrote or validated
    (docs/upload-contract.md); a truncated or inconsistent one raises ``ValueError``.
    """
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) != 8:
            raise ValueError(f"{path}: not a safetensors file")
        (header_len,) = struct.unpack("<Q", prefix)
        header = json.loads(f.read(header_len))
        header.pop("__metadata__", None)
        data = torch.empty(path.stat().st_size - 8 - header_len, dtype=torch.uint8)
        if f.readinto(data.numpy().data) != data.numel():
            raise ValueError(f"{path}: truncated safetensors file")
    entries = []
    end = 0
    contiguous = True  # float32 tensors back to back: the file's data region is the buffer
    for key, entry in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
        dtype = _DTYPES.get(entry["dtype"])
        begin, stop = entry["data_offsets"]
        shape = tuple(entry["shape"])
        if dtype is None:
            raise ValueError(f"{path}: tensor {key!r} has unsupported dtype {entry['dtype']}")
        if stop > data.numel():
            raise ValueError(f"{path}: truncated, tensor {key!r} ends past the end of the file")
        if not end <= begin <= stop or math.prod(shape) * dtype.itemsize != stop - begin:
            raise ValueError(f"{path}: tensor {key!r} overlaps another or does not fit its shape")
        entries.append((key, shape, dtype, begin, stop))
        contiguous = contiguous and begin == end and dtype == torch.float32
        end = stop
    shapes = [(key, shape) for key, shape, *_ in entries]
    if contiguous:
        return PackedTensors(data[:end].view(torch.float32), shapes)
    flat = torch.empty(sum(math.prod(shape) for _, shape in shapes), dtype=torch.float32)
    start = 0
    for _key, shape, dtype, begin, stop in entries:
        raw = data[begin:stop]
        if begin % dtype.itemsize:
            raw = raw.clone()  # a view as a wider dtype needs an aligned offset
        numel = math.prod(shape)
        flat[start : start + numel] = raw.view(dtype)
        start += numel
    return PackedTensors(flat, shapes)
