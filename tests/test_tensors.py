"""The adapter file format: load_adapter reads once, float32 tensors in file order, views of one
buffer when it can; load_adapter_part reads only the wanted tensors; load_partial_sums keeps the
int64 counts of an accumulator's state."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from server.aggregation.packed import PackedTensors
from server.tensors import load_adapter, load_adapter_part, load_partial_sums, save_adapter


def test_a_float32_file_loads_as_views_of_its_data(tmp_path: Path) -> None:
    path = tmp_path / "a.safetensors"
    tensors = {"m.lora_B.weight": torch.randn(8, 4), "m.lora_A.weight": torch.randn(4, 8)}
    path.write_bytes(save_adapter(tensors))
    loaded = load_adapter(path)
    assert isinstance(loaded, PackedTensors)
    assert list(loaded) == ["m.lora_A.weight", "m.lora_B.weight"]  # file order
    for key, value in tensors.items():
        assert torch.equal(loaded[key], value)
        assert loaded[key].untyped_storage().data_ptr() == loaded.flat.untyped_storage().data_ptr()


def test_other_dtypes_are_converted_into_one_float32_buffer(tmp_path: Path) -> None:
    path = tmp_path / "a.safetensors"
    tensors = {
        "a": torch.randn(3, 5).half(),
        "b": torch.randn(7).bfloat16(),
        "c": torch.randn(2, 2),
        "empty": torch.zeros(0, 4),
    }
    path.write_bytes(save_adapter(tensors))
    loaded = load_adapter(path)
    reference = load_file(str(path))
    assert loaded.flat.dtype == torch.float32 and set(loaded) == set(reference)
    for key, value in reference.items():
        assert loaded[key].dtype == torch.float32 and torch.equal(loaded[key], value.float())


def test_a_truncated_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.safetensors"
    path.write_bytes(save_adapter({"a": torch.randn(64)})[:-10])
    with pytest.raises(ValueError, match="ends past the end of the file"):
        load_adapter(path)
    path.write_bytes(b"\x01")
    with pytest.raises(ValueError, match="not a safetensors file"):
        load_adapter(path)


def test_a_part_of_an_adapter_reads_only_the_wanted_tensors_as_float32(tmp_path: Path) -> None:
    path = tmp_path / "a.safetensors"
    tensors = {"m.lora_A.weight": torch.randn(4, 8).half(), "n.lora_A.weight": torch.randn(2, 8)}
    path.write_bytes(save_adapter(tensors))
    part, size = load_adapter_part(path, lambda key: key.startswith("m."))
    assert list(part) == ["m.lora_A.weight"] and size == 4 * 8 * 2  # the stored F16 bytes
    assert part["m.lora_A.weight"].dtype == torch.float32
    assert torch.equal(part["m.lora_A.weight"], tensors["m.lora_A.weight"].float())


def test_partial_sums_keep_their_int64_counts(tmp_path: Path) -> None:
    path = tmp_path / "state.safetensors"
    state = {"counts": torch.tensor([3, 2**40], dtype=torch.int64), "sum": torch.randn(3, 5)}
    path.write_bytes(save_adapter(state))
    loaded = load_partial_sums(path)
    assert set(loaded) == set(state)
    for key, value in state.items():
        assert loaded[key].dtype == value.dtype and torch.equal(loaded[key], value)
    with pytest.raises(ValueError, match="unsupported dtype I64"):
        load_adapter(path)  # an adapter holds floats only
