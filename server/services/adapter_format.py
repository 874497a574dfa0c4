"""Validate an untrusted safetensors upload against the upload contract (docs/upload-contract.md).

Runs in the API process on the file the upload was streamed into, before anything else reads
it. It never loads the file whole and never hands it to torch: the header is capped and parsed
with the stdlib, tensor bytes are scanned in fixed-size chunks, so memory stays bounded whatever
the file size; the allowed dtypes are those of ``server.tensors.ADAPTER_DTYPES``. It also
closes the gaps the safetensors library leaves open (duplicate keys, a header not starting with
``{``, huge headers, NaN/Inf values).
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from server.aggregation.keys import Part, classify, key_for, part_of
from server.errors import AdapterRejected, PayloadTooLarge
from server.limits import MAX_METADATA_ENTRIES
from server.tensors import ITEMSIZE

SCAN_CHUNK_BYTES = 4 << 20  # a multiple of every itemsize, so chunks never split a value
_ENTRY_FIELDS = {"dtype", "shape", "data_offsets"}
_NAME_SHOWN = 120  # names are attacker-chosen: never echo a megabyte of one back
# Exponent bits of the 16-bit formats: all ones means Inf (mantissa 0) or NaN.
_EXPONENT_MASK = {"F16": 0x7C00, "BF16": 0x7F80}
_LORA_PAIR: dict[Part, Part] = {"lora_A": "lora_B", "lora_B": "lora_A"}


@dataclass(frozen=True)
class AdapterSummary:
    """What a valid upload holds: tensors in header order, its metadata and its byte layout."""

    tensors: dict[str, tuple[str, tuple[int, ...]]]
    metadata: dict[str, str]
    header_bytes: int
    data_bytes: int


def _show(name: str) -> str:
    return repr(name if len(name) <= _NAME_SHOWN else name[:_NAME_SHOWN] + "...")


def _reject(message: str, tensor: str | None = None) -> AdapterRejected:
    shown = None if tensor is None else tensor[: _NAME_SHOWN * 2]
    return AdapterRejected(message, tensor=shown)


class _DuplicateKey(Exception):
    def __init__(self, key: str, top_level: bool) -> None:
        self.key = key
        self.top_level = top_level


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            # Only the top-level object maps names to objects; inner ones hold scalars/lists.
            top_level = any(isinstance(v, dict) for _, v in pairs)
            raise _DuplicateKey(key, top_level)
        result[key] = value
    return result


def _refuse_constant(token: str) -> Any:
    raise ValueError(f"{token} is not valid JSON")


def _read_header(f: io.BufferedReader, file_size: int, max_header_bytes: int) -> tuple[int, bytes]:
    """Rule 1: the 8-byte length prefix, the header cap, and the header fitting in the file."""
    if file_size < 8:
        raise _reject(
            f"file is {file_size} bytes; a safetensors file starts with an 8-byte header length"
        )
    n = int.from_bytes(f.read(8), "little")
    # A length beyond the file is a truncated or foreign file (422), checked before the
    # cap so that garbage is not reported as an over-large header.
    if 8 + n > file_size:
        raise _reject(f"header length says {n} bytes but only {file_size - 8} bytes follow it")
    if n > max_header_bytes:
        raise PayloadTooLarge(
            f"safetensors header is {n} bytes; the limit is {max_header_bytes} bytes"
        )
    return n, f.read(n)


def _parse_header(raw: bytes) -> tuple[dict[str, str], dict[str, Any]]:
    """Rule 2: a UTF-8 JSON object with no duplicate keys and a small str->str metadata."""
    if raw[:1] != b"{":
        raise _reject("header must be a JSON object starting with '{' (no leading whitespace)")
    try:
        header = json.loads(
            raw.decode("utf-8"), object_pairs_hook=_unique_object, parse_constant=_refuse_constant
        )
    except _DuplicateKey as dup:
        is_name = dup.top_level and dup.key != "__metadata__"
        raise _reject(
            f"header repeats the key {_show(dup.key)}; every key must appear once",
            tensor=dup.key if is_name else None,
        ) from None
    except UnicodeDecodeError as error:
        raise _reject(f"header is not valid UTF-8 (byte {error.start})") from None
    except (ValueError, RecursionError) as error:  # JSONDecodeError is a ValueError
        raise _reject(f"header is not valid JSON: {str(error)[:200]}") from None
    if not isinstance(header, dict):
        raise _reject("header must be a JSON object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise _reject("__metadata__ must be an object mapping strings to strings")
    if len(metadata) > MAX_METADATA_ENTRIES:
        raise _reject(
            f"__metadata__ has {len(metadata)} entries; at most {MAX_METADATA_ENTRIES} allowed"
        )
    return metadata, header


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _shape_rule(name: str, expected: tuple[int, ...]) -> str:
    part = part_of(name)
    if part == "lora_A" and len(expected) == 2:
        return f"lora_A must be (rank, in_features) = {expected}, rank {expected[0]}"
    if part == "lora_B" and len(expected) == 2:
        return f"lora_B must be (out_features, rank) = {expected}, rank {expected[1]}"
    return f"it must be {expected}"


def _check_entry(
    name: str, entry: Any, expected: Mapping[str, tuple[int, ...]]
) -> tuple[str, tuple[int, ...], int, int]:
    """Rule 3: one tensor entry's fields, its name against the allowlist, dtype and shape."""
    shown = _show(name)
    if not isinstance(entry, dict) or set(entry) != _ENTRY_FIELDS:
        fields = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
        raise _reject(
            f"tensor {shown} must have exactly the fields dtype, shape, data_offsets; "
            f"got {str(fields)[:200]}",
            tensor=name,
        )
    if name not in expected:
        examples = ", ".join(repr(k) for k in sorted(expected)[:2])
        raise _reject(
            f"tensor {shown} is not allowed for this job; allowed keys look like {examples} "
            f"({len(expected)} in all)",
            tensor=name,
        )
    dtype = entry["dtype"]
    if not isinstance(dtype, str) or dtype not in ITEMSIZE:
        raise _reject(
            f"tensor {shown} has dtype {str(dtype)[:40]!r}; allowed dtypes are "
            + ", ".join(ITEMSIZE),
            tensor=name,
        )
    raw_shape = entry["shape"]
    if not isinstance(raw_shape, list) or not all(_is_count(d) for d in raw_shape):
        raise _reject(f"tensor {shown} shape must be a list of non-negative ints", tensor=name)
    shape = tuple(raw_shape)
    want = tuple(expected[name])
    if shape != want:
        raise _reject(
            f"tensor {shown} has shape {str(shape)[:100]} but this client's adapter needs {want}: "
            f"{_shape_rule(name, want)}",
            tensor=name,
        )
    offsets = entry["data_offsets"]
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_count, offsets))):
        raise _reject(
            f"tensor {shown} data_offsets must be [begin, end] with non-negative ints",
            tensor=name,
        )
    return dtype, shape, offsets[0], offsets[1]


def _check_complete(present: Mapping[str, Any], expected: Mapping[str, tuple[int, ...]]) -> None:
    """Rule 4: every expected tensor is present, with a specific message for broken pairs."""
    for name in sorted(set(expected) - set(present)):
        mine, module = classify(name)
        if mine in _LORA_PAIR:
            other = _LORA_PAIR[mine]
            if key_for(module, other) in present:
                raise _reject(
                    f"tensor {_show(name)} is missing: every {other} needs its {mine} "
                    "(A/B pairs must be complete)",
                    tensor=name,
                )
        raise _reject(
            f"tensor {_show(name)} is missing: this client's adapter must hold exactly "
            f"{len(expected)} tensors",
            tensor=name,
        )


def _check_layout(
    layout: list[tuple[str, str, tuple[int, ...], int, int]], header_bytes: int, file_size: int
) -> int:
    """Rule 5: sizes match shapes, buffers are contiguous from 0, and exactly cover the file.

    Python ints cannot overflow, and shapes already equal the (small) expected ones, so the
    products below are exact and cheap.
    """
    position = 0
    for name, dtype, shape, begin, end in sorted(layout, key=lambda t: (t[3], t[4])):
        want = math.prod(shape) * ITEMSIZE[dtype]
        if end < begin or end - begin != want:
            raise _reject(
                f"tensor {_show(name)} data_offsets [{begin}, {end}] span {end - begin} bytes; "
                f"{dtype} {shape} needs {want}",
                tensor=name,
            )
        if begin != position:
            kind = "a gap before" if begin > position else "an overlap with the previous tensor at"
            raise _reject(
                f"tensor {_show(name)} starts at byte {begin}: {kind} byte {position}; tensor "
                "data must be contiguous from 0",
                tensor=name,
            )
        position = end
    expected_size = 8 + header_bytes + position
    if expected_size > file_size:
        last = max(layout, key=lambda t: t[4])[0] if layout else None
        raise _reject(
            f"file is truncated: tensor data ends at byte {expected_size} but the file has "
            f"{file_size} bytes",
            tensor=last,
        )
    if expected_size < file_size:
        raise _reject(
            f"file has {file_size - expected_size} unexpected bytes after the last tensor"
        )
    return position


def _first_bad(values: np.ndarray, dtype: str) -> tuple[int, str] | None:
    """Index and kind (NaN/Inf) of the first non-finite value in one chunk, if any."""
    if dtype == "F32":
        if np.isfinite(values).all():
            return None
        index = int(np.argmin(np.isfinite(values)))
        return index, "NaN" if math.isnan(values[index]) else "Inf"
    mask = _EXPONENT_MASK[dtype]
    # max(x & mask) == mask iff some value has all exponent bits set; avoids a bool array.
    masked = np.bitwise_and(values, mask)
    if masked.max(initial=0) != mask:
        return None
    index = int(np.argmax(masked == mask))
    return index, "NaN" if int(values[index]) & ~mask & 0x7FFF else "Inf"


def _check_finite(
    f: io.BufferedReader, data_start: int, layout: list[tuple[str, str, tuple[int, ...], int, int]]
) -> None:
    """Rule 6: every value finite, read through one reused buffer of ``SCAN_CHUNK_BYTES``, or
    of the largest tensor's size when that is smaller (a small adapter's upload should not
    zero megabytes for its scan)."""
    largest = max((end - begin for *_, begin, end in layout), default=0)
    buffer = bytearray(min(SCAN_CHUNK_BYTES, largest))
    view = memoryview(buffer)
    for name, dtype, _shape, begin, end in layout:
        numpy_dtype = "<f4" if dtype == "F32" else "<u2"
        f.seek(data_start + begin)
        done = 0
        while done < end - begin:
            want = min(SCAN_CHUNK_BYTES, end - begin - done)
            got = f.readinto(view[:want])
            if got != want:
                raise _reject(f"file ended while reading tensor {_show(name)}", tensor=name)
            values = np.frombuffer(buffer, dtype=numpy_dtype, count=want // ITEMSIZE[dtype])
            bad = _first_bad(values, dtype)
            if bad is not None:
                index = done // ITEMSIZE[dtype] + bad[0]
                raise _reject(
                    f"tensor {_show(name)} contains {bad[1]} (first at flat index {index}); "
                    "all values must be finite",
                    tensor=name,
                )
            done += want


def validate_adapter(
    path: Path, expected: Mapping[str, tuple[int, ...]], *, max_header_bytes: int = 1 << 20
) -> AdapterSummary:
    """Check the safetensors file at ``path`` against the upload contract.

    ``expected`` maps every tensor name this client must upload to its exact shape. Raises
    ``PayloadTooLarge`` when the header exceeds ``max_header_bytes`` and ``AdapterRejected``
    (one message, naming the tensor where there is one) for any other violation.
    """
    with open(path, "rb") as f:
        file_size = f.seek(0, 2)
        f.seek(0)
        header_bytes, raw = _read_header(f, file_size, max_header_bytes)
        metadata, entries = _parse_header(raw)
        layout = [(name, *_check_entry(name, e, expected)) for name, e in entries.items()]
        _check_complete(entries, expected)
        data_bytes = _check_layout(layout, header_bytes, file_size)
        _check_finite(f, 8 + header_bytes, layout)
    return AdapterSummary(
        tensors={name: (dtype, shape) for name, dtype, shape, _, _ in layout},
        metadata=metadata,
        header_bytes=header_bytes,
        data_bytes=data_bytes,
    )
