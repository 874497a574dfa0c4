"""The adapter file format: safetensors bytes and files in, float32 torch tensors out.

The one reader and writer of the coordinator's safetensors files (adapters, and the partial sums
of a sharded round), and the one table of the dtypes they may hold. Uploads are checked against
the upload contract (``services.adapter_format``) before anything here reads them.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from io import BufferedReader
from pathlib import Path

import torch
from safetensors.torch import save

from server.aggregation.packed import PackedTensors
from server.aggregation.rules import Tensors

#: The dtypes an adapter may hold: safetensors name -> torch dtype.
ADAPTER_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
#: Bytes per value of each adapter dtype.
ITEMSIZE = {name: dtype.itemsize for name, dtype in ADAPTER_DTYPES.items()}
# Partial sums also hold int64 counts (``Accumulator.state``).
_PARTIAL_SUM_DTYPES = {**ADAPTER_DTYPES, "I64": torch.int64}


@dataclass(frozen=True)
class _Entry:
    """One tensor of a file: where its bytes lie in the data region, and what they hold."""

    key: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    begin: int
    stop: int


def save_adapter(tensors: dict[str, torch.Tensor]) -> bytes:
    """Serialise an adapter (contiguous CPU copies; safetensors refuses shared storage).

    The bytes depend on the tensors only, so equal adapters have equal SHA-256: the
    metadata is the single ``format`` entry, because safetensors writes several metadata
    entries in an arbitrary order.
    """
    clean = {k: v.detach().to("cpu").contiguous() for k, v in sorted(tensors.items())}
    return save(clean, metadata={"format": "pt"})


def _read_header(
    f: BufferedReader, path: Path, dtypes: dict[str, torch.dtype]
) -> tuple[int, list[_Entry]]:
    """The offset of the data region and the tensors in data order.

    Files are ones the coordinator wrote or validated (docs/upload-contract.md); a truncated
    or inconsistent one raises ``ValueError``.
    """
    prefix = f.read(8)
    if len(prefix) != 8:
        raise ValueError(f"{path}: not a safetensors file")
    (header_len,) = struct.unpack("<Q", prefix)
    header = json.loads(f.read(header_len))
    header.pop("__metadata__", None)
    data_bytes = os.fstat(f.fileno()).st_size - 8 - header_len
    entries = []
    end = 0
    for key, entry in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
        dtype = dtypes.get(entry["dtype"])
        begin, stop = entry["data_offsets"]
        shape = tuple(entry["shape"])
        if dtype is None:
            raise ValueError(f"{path}: tensor {key!r} has unsupported dtype {entry['dtype']}")
        if stop > data_bytes:
            raise ValueError(f"{path}: truncated, tensor {key!r} ends past the end of the file")
        if not end <= begin <= stop or math.prod(shape) * dtype.itemsize != stop - begin:
            raise ValueError(f"{path}: tensor {key!r} overlaps another or does not fit its shape")
        entries.append(_Entry(key, shape, dtype, begin, stop))
        end = stop
    return 8 + header_len, entries


def _view(raw: torch.Tensor, entry: _Entry) -> torch.Tensor:
    """The bytes of one tensor as its dtype and shape (a copy where they are misaligned)."""
    if entry.begin % entry.dtype.itemsize:
        raw = raw.clone()  # a view as a wider dtype needs an aligned offset
    return raw.view(entry.dtype).view(entry.shape)


def load_adapter(path: Path) -> PackedTensors:
    """Load every tensor of an adapter file as float32, in file order.

    The data region is read in one go; for a float32 file the tensors are views of it, back to
    back, so the accumulator folds the whole update with one add (other dtypes are converted
    into one float32 buffer).
    """
    with open(path, "rb") as f:
        _start, entries = _read_header(f, path, ADAPTER_DTYPES)
        data = torch.empty(entries[-1].stop if entries else 0, dtype=torch.uint8)
        if f.readinto(data.numpy().data) != data.numel():
            raise ValueError(f"{path}: truncated safetensors file")
    shapes = [(entry.key, entry.shape) for entry in entries]
    # float32 tensors back to back: the file's data region is the buffer
    contiguous, end = True, 0
    for entry in entries:
        contiguous = contiguous and entry.begin == end and entry.dtype == torch.float32
        end = entry.stop
    if contiguous:
        return PackedTensors(data.view(torch.float32), shapes)
    flat = torch.empty(sum(math.prod(shape) for _, shape in shapes), dtype=torch.float32)
    start = 0
    for entry in entries:
        numel = math.prod(entry.shape)
        flat[start : start + numel] = _view(data[entry.begin : entry.stop], entry).flatten()
        start += numel
    return PackedTensors(flat, shapes)


def _read_entries(f: BufferedReader, path: Path, start: int, entries: Sequence[_Entry]) -> Tensors:
    """The given tensors of an open file, each read on its own, in their stored dtype."""
    out: Tensors = {}
    for entry in entries:
        raw = torch.empty(entry.stop - entry.begin, dtype=torch.uint8)
        f.seek(start + entry.begin)
        if f.readinto(raw.numpy().data) != raw.numel():
            raise ValueError(f"{path}: truncated safetensors file")
        out[entry.key] = _view(raw, entry)
    return out


def load_adapter_part(path: Path, wanted: Callable[[str], bool]) -> tuple[Tensors, int]:
    """The tensors of an adapter file whose key is ``wanted``, as float32, and the bytes they
    occupy in the file: a shard of a round reads only its modules' tensors."""
    with open(path, "rb") as f:
        start, entries = _read_header(f, path, ADAPTER_DTYPES)
        mine = [entry for entry in entries if wanted(entry.key)]
        tensors = _read_entries(f, path, start, mine)
    size = sum(entry.stop - entry.begin for entry in mine)
    return {key: tensor.float() for key, tensor in tensors.items()}, size


def load_partial_sums(path: Path) -> Tensors:
    """A file of partial sums (``Accumulator.state``): float32 sums and int64 counts, as stored."""
    with open(path, "rb") as f:
        start, entries = _read_header(f, path, _PARTIAL_SUM_DTYPES)
        return _read_entries(f, path, start, entries)
