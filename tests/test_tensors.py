"""load_adapter: one read, float32 tensors in file order, views of one buffer when it can."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from server.aggregation.packed import PackedTensors
from server.tensors import load_adapter, save_adapter


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
