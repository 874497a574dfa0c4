"""The upload validator: one crafted file per contract rule, property tests, and a memory bound.

Malformed files are written byte by byte on purpose: the safetensors writers cannot produce
them, which is exactly why the validator has to catch them.
"""

from __future__ import annotations

import json
import struct
import tempfile
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.numpy import save, save_file
from safetensors.torch import save_file as save_torch_file

from server.errors import AdapterRejected, PayloadTooLarge
from server.services import adapter_format
from server.services.adapter_format import AdapterSummary, validate_adapter

A = "base_model.model.fc1.lora_A.weight"
B = "base_model.model.fc1.lora_B.weight"
EXPECTED = {A: (4, 64), B: (128, 4)}
MiB = 1 << 20


def _arrays(dtype: Any = np.float32) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {k: rng.standard_normal(shape).astype(dtype) for k, shape in EXPECTED.items()}


def _header_entries(dtype: str = "F32", itemsize: int = 4) -> dict[str, Any]:
    """Entries for EXPECTED laid out contiguously, A first."""
    entries, offset = {}, 0
    for name, shape in EXPECTED.items():
        size = int(np.prod(shape)) * itemsize
        entries[name] = {
            "dtype": dtype,
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    return entries


def _data_size(entries: dict[str, Any]) -> int:
    ends = [e["data_offsets"][1] for k, e in entries.items() if k != "__metadata__"]
    return max(ends, default=0)


def _write(
    path: Path, header: dict[str, Any] | bytes, data: bytes | None = None, n: int | None = None
) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    if data is None:
        data = b"\x00" * _data_size(header) if isinstance(header, dict) else b""
    path.write_bytes(struct.pack("<Q", len(raw) if n is None else n) + raw + data)
    return path


def _rejected(path: Path, *fragments: str, tensor: str | None = None) -> AdapterRejected:
    with pytest.raises(AdapterRejected) as info:
        validate_adapter(path, EXPECTED)
    for fragment in fragments:
        assert fragment in info.value.message
    assert info.value.tensor == tensor
    return info.value


@pytest.fixture
def f(tmp_path: Path) -> Path:
    return tmp_path / "upload.safetensors"


# Valid files ----------------------------------------------------------------------------------


def test_valid_f32_adapter_from_safetensors_numpy(f: Path) -> None:
    save_file(_arrays(), str(f), metadata={"format": "pt", "rank": "4"})
    summary = validate_adapter(f, EXPECTED)
    assert summary.tensors == {A: ("F32", (4, 64)), B: ("F32", (128, 4))}
    assert summary.metadata == {"format": "pt", "rank": "4"}
    assert summary.data_bytes == (4 * 64 + 128 * 4) * 4
    assert 8 + summary.header_bytes + summary.data_bytes == f.stat().st_size


def test_valid_f16_and_bf16_adapters(f: Path) -> None:
    save_file(_arrays(np.float16), str(f))
    assert validate_adapter(f, EXPECTED).tensors[A] == ("F16", (4, 64))
    tensors = {k: torch.randn(shape, dtype=torch.bfloat16) for k, shape in EXPECTED.items()}
    save_torch_file(tensors, str(f))
    assert validate_adapter(f, EXPECTED).tensors[B] == ("BF16", (128, 4))


def test_mixed_dtypes_and_zero_sized_tensors(f: Path) -> None:
    expected = {A: (0, 64), B: (128, 0), "base_model.model.x.vera_lambda_d": (4,)}
    arrays = {A: np.zeros((0, 64), np.float32), B: np.zeros((128, 0), np.float16)}
    arrays["base_model.model.x.vera_lambda_d"] = np.ones(4, np.float32)
    save_file(arrays, str(f))
    assert validate_adapter(f, expected).data_bytes == 16


# Rule 1: length prefix and header size ---------------------------------------------------------


def test_file_shorter_than_8_bytes(f: Path) -> None:
    f.write_bytes(b"\x01\x00\x00")
    _rejected(f, "3 bytes", "8-byte header length")


def test_header_over_the_cap_is_payload_too_large(f: Path) -> None:
    f.write_bytes(((1 << 20) + 1).to_bytes(8, "little") + b"{" + b" " * (1 << 20))
    with pytest.raises(PayloadTooLarge, match="1048577 bytes; the limit is 1048576"):
        validate_adapter(f, EXPECTED)
    _write(f, {"__metadata__": {"pad": "x" * 2000}, **_header_entries()})
    with pytest.raises(PayloadTooLarge):
        validate_adapter(f, EXPECTED, max_header_bytes=1024)


def test_header_length_beyond_the_file(f: Path) -> None:
    _write(f, b'{"a": 1}', n=1000)
    _rejected(f, "header length says 1000 bytes but only 8 bytes follow")


# Rule 2: header JSON -----------------------------------------------------------------------------


def test_header_with_leading_space(f: Path) -> None:
    raw = b" " + json.dumps(_header_entries()).encode()
    _write(f, raw, b"\x00" * _data_size(_header_entries()))
    _rejected(f, "must be a JSON object starting with '{'")


def test_header_not_utf8(f: Path) -> None:
    _write(f, b'{"\xff": 1}')
    _rejected(f, "not valid UTF-8")


@pytest.mark.parametrize("raw", [b'{"a": ', b"{} trailing", b'{"a": NaN}', b"{" * 100_000])
def test_header_not_json(f: Path, raw: bytes) -> None:
    _write(f, raw)
    _rejected(f, "not valid JSON")


def test_duplicate_tensor_name_is_named(f: Path) -> None:
    entries = _header_entries()
    body = json.dumps(entries)[1:-1]
    first_a = json.dumps({A: entries[A]})[1:-1]
    raw = ("{" + first_a + ", " + body + "}").encode()
    _write(f, raw, b"\x00" * _data_size(entries))
    _rejected(f, f"repeats the key {A!r}", tensor=A)


def test_duplicate_field_inside_an_entry(f: Path) -> None:
    entries = _header_entries()
    text = json.dumps(entries).replace('"dtype": "F32"', '"dtype": "F32", "dtype": "F16"', 1)
    _write(f, text.encode(), b"\x00" * _data_size(entries))
    _rejected(f, "repeats the key 'dtype'")


def test_metadata_must_be_str_to_str(f: Path) -> None:
    _write(f, {"__metadata__": {"rank": 4}, **_header_entries()})
    _rejected(f, "__metadata__ must be an object mapping strings to strings")


def test_metadata_entry_cap(f: Path) -> None:
    _write(f, {"__metadata__": {str(i): "v" for i in range(65)}, **_header_entries()})
    _rejected(f, "65 entries; at most 64")


# Rule 3: tensor entries --------------------------------------------------------------------------


def test_entry_with_extra_field(f: Path) -> None:
    entries = _header_entries()
    entries[B]["extra"] = 1
    _write(f, entries)
    _rejected(f, "exactly the fields dtype, shape, data_offsets", tensor=B)


@pytest.mark.parametrize("dtype", ["F64", "I32", "F8_E4M3", "BOOL"])
def test_disallowed_dtype_is_named(f: Path, dtype: str) -> None:
    entries = _header_entries()
    entries[A]["dtype"] = dtype
    _write(f, entries)
    _rejected(f, f"dtype {dtype!r}", "F32, F16, BF16", tensor=A)


@pytest.mark.parametrize("shape", [[4, -64], [4, 64.0], [True, 64], "4x64", [4, "64"]])
def test_shape_must_be_non_negative_ints(f: Path, shape: Any) -> None:
    entries = _header_entries()
    entries[A]["shape"] = shape
    _write(f, entries)
    _rejected(f, "shape must be a list of non-negative ints", tensor=A)


def test_tensor_outside_the_allowlist(f: Path) -> None:
    entries = _header_entries()
    evil = "base_model.model.fc1.lora_A.weight.extra"
    entries[evil] = entries.pop(A)
    _write(f, entries)
    _rejected(
        f, f"tensor {evil!r} is not allowed for this job; allowed keys look like", tensor=evil
    )


def test_lora_a_with_the_wrong_rank(f: Path) -> None:
    entries = _header_entries()
    entries[A]["shape"] = [8, 64]
    _write(f, entries)
    _rejected(f, "(8, 64)", "lora_A must be (rank, in_features) = (4, 64)", tensor=A)


def test_lora_b_with_the_wrong_shape(f: Path) -> None:
    entries = _header_entries()
    entries[B]["shape"] = [4, 128]
    _write(f, entries)
    _rejected(f, "(4, 128)", "lora_B must be (out_features, rank) = (128, 4)", tensor=B)


@pytest.mark.parametrize("offsets", [[0], [0, -1], [0, 1.5], "0-1024"])
def test_offsets_must_be_two_non_negative_ints(f: Path, offsets: Any) -> None:
    entries = _header_entries()
    entries[A]["data_offsets"] = offsets
    _write(f, entries, b"\x00" * 3072)
    _rejected(f, "data_offsets must be [begin, end]", tensor=A)


# Rule 4: completeness ----------------------------------------------------------------------------


def test_missing_lora_b_names_the_broken_pair(f: Path) -> None:
    save_file({A: _arrays()[A]}, str(f))
    _rejected(f, f"{B!r} is missing: every lora_A needs its lora_B", tensor=B)


def test_missing_lora_a_names_the_broken_pair(f: Path) -> None:
    save_file({B: _arrays()[B]}, str(f))
    _rejected(f, f"{A!r} is missing: every lora_B needs its lora_A", tensor=A)


def test_missing_tensor_without_partner(f: Path) -> None:
    save_file({}, str(f))
    _rejected(f, f"{A!r} is missing", "exactly 2 tensors", tensor=A)


# Rule 5: offsets and coverage --------------------------------------------------------------------


def test_offsets_not_matching_the_shape(f: Path) -> None:
    entries = _header_entries()
    entries[B]["data_offsets"][1] -= 4
    _write(f, entries)
    _rejected(f, "span 2044 bytes; F32 (128, 4) needs 2048", tensor=B)


def test_gap_between_tensors(f: Path) -> None:
    entries = _header_entries()
    entries[B]["data_offsets"] = [1028, 3076]
    _write(f, entries)
    _rejected(f, "a gap before byte 1024", tensor=B)


def test_overlapping_tensors(f: Path) -> None:
    entries = _header_entries()
    entries[B]["data_offsets"] = [1020, 3068]
    _write(f, entries, b"\x00" * 3072)
    _rejected(f, "an overlap", tensor=B)


def test_trailing_bytes_after_the_last_tensor(f: Path) -> None:
    entries = _header_entries()
    _write(f, entries, b"\x00" * (_data_size(entries) + 1))
    _rejected(f, "1 unexpected bytes after the last tensor")


def test_truncated_tensor_data(f: Path) -> None:
    entries = _header_entries()
    _write(f, entries, b"\x00" * (_data_size(entries) - 1))
    _rejected(f, "file is truncated", tensor=B)


def test_offsets_that_would_overflow_u64(f: Path) -> None:
    entries = _header_entries()
    entries[B]["data_offsets"] = [2**64 - 1, 2**64 - 1 + 2048]
    _write(f, entries, b"\x00" * 3072)
    _rejected(f, "a gap before byte 1024", tensor=B)


# Rule 6: finite values ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "bad", "kind"),
    [
        (np.float32, np.nan, "NaN"),
        (np.float32, -np.inf, "Inf"),
        (np.float16, np.inf, "Inf"),
        (np.float16, np.nan, "NaN"),
    ],
)
def test_non_finite_values_numpy(f: Path, dtype: Any, bad: float, kind: str) -> None:
    arrays = _arrays(dtype)
    arrays[B][127, 3] = bad
    save_file(arrays, str(f))
    _rejected(f, f"{B!r} contains {kind} (first at flat index 511)", tensor=B)


@pytest.mark.parametrize("chunk", [256, 1024, 4096])
def test_non_finite_value_past_the_first_scan_chunk(
    f: Path, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The scan buffer is the smaller of the chunk and the largest tensor (B, 2,048 bytes): B's
    # last value lies in its eighth chunk of 256 bytes, its second of 1,024, its only one of 4,096.
    monkeypatch.setattr(adapter_format, "SCAN_CHUNK_BYTES", chunk)
    arrays = _arrays(np.float32)
    arrays[B][127, 3] = np.nan
    save_file(arrays, str(f))
    _rejected(f, f"{B!r} contains NaN (first at flat index 511)", tensor=B)


@pytest.mark.parametrize(("bad", "kind"), [(float("nan"), "NaN"), (float("-inf"), "Inf")])
def test_non_finite_values_bf16(f: Path, bad: float, kind: str) -> None:
    tensors = {k: torch.randn(shape, dtype=torch.bfloat16) for k, shape in EXPECTED.items()}
    tensors[A][1, 2] = bad
    save_torch_file(tensors, str(f))
    _rejected(f, f"contains {kind} (first at flat index 66)", tensor=A)


def test_largest_finite_values_pass(f: Path) -> None:
    arrays = {
        k: np.full(shape, np.finfo(np.float16).max, np.float16) for k, shape in EXPECTED.items()
    }
    save_file(arrays, str(f))
    validate_adapter(f, EXPECTED)
    tensors = {k: torch.full(shape, -3.0e38, dtype=torch.bfloat16) for k, shape in EXPECTED.items()}
    save_torch_file(tensors, str(f))
    validate_adapter(f, EXPECTED)


# Properties --------------------------------------------------------------------------------------

_modules = st.lists(
    st.from_regex(r"[a-z][a-z0-9_]{0,8}(\.[a-z0-9_]{1,6}){0,2}", fullmatch=True),
    min_size=1,
    max_size=4,
    unique=True,
)


@settings(max_examples=60, deadline=None)
@given(
    modules=_modules,
    rank=st.integers(1, 8),
    dims=st.lists(st.tuples(st.integers(1, 24), st.integers(1, 24)), min_size=4, max_size=4),
    dtype=st.sampled_from([np.float32, np.float16]),
    metadata=st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=5),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_valid_adapters_pass(
    modules: list[str],
    rank: int,
    dims: list[tuple[int, int]],
    dtype: Any,
    metadata: dict[str, str],
    seed: int,
) -> None:
    rng = np.random.default_rng(seed)
    expected: dict[str, tuple[int, ...]] = {}
    for module, (in_f, out_f) in zip(modules, dims, strict=False):
        expected[f"base_model.model.{module}.lora_A.weight"] = (rank, in_f)
        expected[f"base_model.model.{module}.lora_B.weight"] = (out_f, rank)
    arrays = {k: rng.standard_normal(s).astype(dtype) for k, s in expected.items()}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "u.safetensors"
        path.write_bytes(save(arrays, metadata=metadata or None))
        summary = validate_adapter(path, expected)
        assert {k: s for k, (_, s) in summary.tensors.items()} == expected
        assert summary.metadata == metadata
        with safe_open(str(path), framework="np") as lib:  # the library agrees it is valid
            assert set(lib.keys()) == set(expected)


_VALID = save(_arrays(np.float16), metadata={"format": "pt"})
_HEADER_END = 8 + int.from_bytes(_VALID[:8], "little")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    flips=st.lists(
        st.tuples(st.integers(0, _HEADER_END - 1), st.integers(0, 255)), min_size=1, max_size=6
    ),
)
def test_header_byte_flips_only_ever_reject(flips: list[tuple[int, int]]) -> None:
    data = bytearray(_VALID)
    for position, value in flips:
        data[position] = value
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "u.safetensors"
        path.write_bytes(bytes(data))
        try:
            summary = validate_adapter(path, EXPECTED)
        except (AdapterRejected, PayloadTooLarge):
            return
        assert isinstance(summary, AdapterSummary)
        with safe_open(str(path), framework="np"):  # anything we accept, the library opens
            pass


# Memory ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_memory_stays_bounded_on_a_200_mb_file(f: Path, record_property: Any) -> None:
    rows, cols = 256, 65536  # 16.8 M values per tensor
    layout = [
        ("base_model.model.m1.lora_A.weight", "F32", (rows, cols)),
        ("base_model.model.m1.lora_B.weight", "F32", (cols, rows)),
        ("base_model.model.m2.lora_A.weight", "F16", (rows, cols)),
        ("base_model.model.m2.lora_B.weight", "BF16", (cols, rows)),
    ]
    block = np.random.default_rng(1).standard_normal(1 << 20).astype(np.float32)
    blocks = {
        "F32": block.tobytes(),
        "F16": block.astype(np.float16).tobytes(),
        "BF16": (block.view(np.uint32) >> 16).astype(np.uint16).tobytes(),
    }
    header, offset = {}, 0
    for name, dtype, shape in layout:
        size = rows * cols * (4 if dtype == "F32" else 2)
        header[name] = {
            "dtype": dtype,
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header).encode()
    with f.open("wb") as out:
        out.write(struct.pack("<Q", len(raw)) + raw)
        for _, dtype, _ in layout:
            for _ in range(rows * cols // (1 << 20)):
                out.write(blocks[dtype])
    assert f.stat().st_size > 200_000_000
    expected = {name: shape for name, _, shape in layout}

    tracemalloc.start()
    try:
        summary = validate_adapter(f, expected)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    record_property("peak_traced_bytes", peak)
    print(f"\nvalidated {f.stat().st_size / 1e6:.1f} MB, peak traced {peak / 1e6:.2f} MB")
    assert summary.data_bytes == offset
    assert peak < 20 * MiB

    # The very last value is checked too: the scan really covers the whole file.
    with f.open("r+b") as out:
        out.seek(-2, 2)
        out.write(struct.pack("<H", 0x7FC0))  # BF16 NaN
    with pytest.raises(
        AdapterRejected, match=f"contains NaN \\(first at flat index {rows * cols - 1}"
    ):
        validate_adapter(f, expected)
