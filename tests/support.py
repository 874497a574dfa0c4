"""Test helpers: a tiny job spec, adapters of any rank, and a coordinator on a test database."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from fastapi.testclient import TestClient
from safetensors.torch import save

from server.config import Settings
from server.db.migrate import upgrade
from server.main import create_app

OPERATOR_KEY = "test-operator-key-0123456789"
MODULES = {"base_model.model.fc1": [8, 6], "base_model.model.fc2": [6, 4]}
HEAD = {"base_model.model.head.weight": [3, 4], "base_model.model.head.bias": [3]}


def job_spec(**overrides: Any) -> dict[str, Any]:
    """A small valid job: two adapted layers and a shared head, 3 clients, 2 rounds."""
    spec: dict[str, Any] = {
        "name": "tiny",
        "modules": MODULES,
        "extra": HEAD,
        "strategy": "rbla",
        "rank": {"policy": "autorank", "r_min": 2, "r_max": 8},
        "rounds": 2,
        "enrolment": {"min_clients": 3, "target_clients": 3, "timeout_s": 300},
        "round": {"timeout_s": 300},
        "seed": 7,
    }
    spec.update(overrides)
    return spec


def stats(n: int, entropy: float = 0.5) -> dict[str, Any]:
    return {
        "n_samples": n,
        "label_entropy": entropy,
        "gini_simpson": min(0.9, entropy),
        "loss_entropy": 0.4,
    }


def adapter_tensors(
    rank: int, *, parts: tuple[str, ...] = ("lora_A", "lora_B"), head: bool = True, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Random tensors shaped for ``MODULES`` at ``rank`` (and the head)."""
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for module, (d_in, d_out) in MODULES.items():
        if "lora_A" in parts:
            tensors[f"{module}.lora_A.weight"] = torch.randn(rank, d_in, generator=generator)
        if "lora_B" in parts:
            tensors[f"{module}.lora_B.weight"] = torch.randn(d_out, rank, generator=generator)
    if head:
        for key, shape in HEAD.items():
            tensors[key] = torch.randn(*shape, generator=generator)
    return tensors


def adapter_bytes(rank: int, **kwargs: Any) -> bytes:
    return save(adapter_tensors(rank, **kwargs))


def settings_for(database_url: str, storage: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "storage_url": f"file://{storage}",
        "operator_keys": [OPERATOR_KEY],
        "environment": "production",
        "scheduler_interval_s": 0.2,
    }
    values.update(overrides)
    return Settings(**values)


@contextmanager
def coordinator(settings: Settings) -> Iterator[TestClient]:
    """A migrated database and a running app (lifespan included) behind a TestClient."""
    upgrade(settings.database_url)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def operator(client: TestClient) -> dict[str, str]:
    return {"Authorization": f"Bearer {OPERATOR_KEY}"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
