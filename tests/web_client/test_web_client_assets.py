"""The digits assets beside the bundle are what frontend/client/scripts/export_digits.py makes
from client_sdk: the pool, its per-device splits and the manifest byte for byte, the base to
float rounding (client_sdk.bases: bit-identity holds within one CPU instruction set only)."""

from __future__ import annotations

import hashlib
import json
import runpy

import numpy as np
import pytest
from safetensors.numpy import load

from client_sdk.model_spec import BUILTIN_CONFIGS, config_sha256
from client_sdk.splits import dirichlet_split
from client_sdk.tasks import get_task
from tests.web_client.node import CLIENT, STATIC

DIGITS = STATIC / "digits"


@pytest.fixture(scope="module")
def export() -> dict:
    return runpy.run_path(str(CLIENT / "scripts" / "export_digits.py"))


def test_samples_are_the_digits_pool_and_its_simulate_splits(export: dict) -> None:
    committed = (DIGITS / "samples.safetensors").read_bytes()
    assert committed == export["samples_file"](), "run frontend/client/scripts/export_digits.py"
    tensors = load(committed)
    pool = get_task("digits").load(seed=0)
    assert np.array_equal(tensors["x"] / 16.0, pool.x_train)
    assert np.array_equal(tensors["y"], pool.y_train)
    shards = dirichlet_split(pool.y_train, 3, **export["SPLIT"])
    assert [np.flatnonzero(tensors["owner.3"] == i).tolist() for i in range(3)] == [
        s.tolist() for s in shards
    ]


def test_base_is_the_pretrained_digits_base(export: dict) -> None:
    committed = load((DIGITS / "base.safetensors").read_bytes())
    built = load(export["base_file"]())
    assert {k: v.shape for k, v in committed.items()} == {k: v.shape for k, v in built.items()}
    for key, value in built.items():
        np.testing.assert_allclose(committed[key], value, rtol=1e-4, atol=1e-6, err_msg=key)


def test_manifest_names_the_model_the_coordinator_checks() -> None:
    manifest = json.loads((DIGITS / "manifest.json").read_text())
    assert manifest["config_sha256"] == config_sha256(BUILTIN_CONFIGS["digits"])
    for name, sha in manifest["sha256"].items():
        assert hashlib.sha256((DIGITS / name).read_bytes()).hexdigest() == sha, name
