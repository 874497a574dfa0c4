"""The browser client and the Python SDK agree where the protocol needs them to: the enrolment
statistics (client_sdk.profile, to 1e-9) and the safetensors bytes of an update."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import torch

from client_sdk.profile import profile
from client_sdk.wire_format import decode_update, encode_update
from tests.web_client.node import run_module

RNG = np.random.default_rng(7)
CASES = {
    "balanced, losses on the bin edges": ([0, 1, 2, 3] * 5, np.linspace(0.0, 1.0, 20).tolist(), 4),
    "skewed, ten classes counted": ([3, 3, 3, 9, 9, 1], [0.2, 2.5, 2.5, 0.7, 1.1, 0.2], 10),
    "one class, equal losses": ([7, 7, 7], [0.5, 0.5, 0.5], None),
    "no losses": ([0, 1, 1, 2, 2, 2], None, None),
    "digits-sized, random": (
        RNG.integers(0, 10, 300).tolist(),
        RNG.gamma(2.0, 0.7, 300).tolist(),
        10,
    ),
    "losses on the edges of 10 bins over [0, 3]": (
        [i % 10 for i in range(31)],
        [i / 10 for i in range(31)],
        10,
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_complexity_stats_equal_client_sdk_profile(case: str) -> None:
    labels, losses, classes = CASES[case]
    expected = profile(labels, losses, num_classes=classes).as_dict()
    got = run_module(
        "console.log(JSON.stringify(client.complexityStats("
        "input.labels, input.losses, input.classes ?? undefined)));",
        labels=labels,
        losses=losses,
        classes=classes,
    )
    assert set(got) == set(expected)
    for key, value in expected.items():
        if value is None:
            assert got[key] is None, key
        else:
            assert got[key] == pytest.approx(value, abs=1e-9), key


def test_an_update_encodes_to_the_bytes_the_python_sdk_writes() -> None:
    tensors = {
        "base_model.model.fc1.lora_B.weight": torch.randn(4, 2),
        "base_model.model.fc1.lora_A.weight": torch.randn(2, 3),
        "base_model.model.fc3.bias": torch.tensor([1.5, -0.0, 3e-38]),
    }
    metadata = {"rank": "2", "lora_alpha": "4.0", "parts": "extra,lora_A,lora_B", "n_samples": "9"}
    got = run_module(
        "const tensors = Object.fromEntries(Object.entries(input.tensors).map(([k, t]) =>"
        " [k, { shape: t.shape, data: Float32Array.from(t.values) }]));\n"
        "const bytes = client.encodeSafetensors(tensors, input.metadata);\n"
        "console.log(JSON.stringify(Buffer.from(bytes).toString('base64')));",
        tensors={
            k: {"shape": list(t.shape), "values": t.flatten().tolist()} for k, t in tensors.items()
        },
        metadata=metadata,
    )
    assert base64.b64decode(got) == encode_update(tensors, metadata)


def test_python_updates_decode_in_the_browser_client() -> None:
    tensors = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3) / 7}
    data = encode_update(tensors, {"rank": "2"})
    got = run_module(
        "const { tensors, metadata } = client.decodeSafetensors("
        "new Uint8Array(Buffer.from(input.data, 'base64')));\n"
        "console.log(JSON.stringify({ shape: tensors.a.shape, values: [...tensors.a.data],"
        " metadata }));",
        data=base64.b64encode(data).decode(),
    )
    decoded, metadata = decode_update(data)
    assert got["shape"] == [2, 3] and got["metadata"] == metadata
    assert got["values"] == decoded["a"].flatten().tolist()
