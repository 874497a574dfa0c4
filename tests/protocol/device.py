"""A device speaking docs/protocol.md over raw HTTP (httpx and numpy only, no client SDK), and
the jobs the conformance suite runs it in."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from tests.live import LiveCoordinator
from tests.protocol import wire

TASK = "/api/v1/clients/me/task"
# A job whose clients train with their own code: its layout is written in the spec.
MODULES = {"base_model.model.fc1": [8, 6], "base_model.model.fc2": [6, 4]}
HEAD = {"base_model.model.head.weight": [3, 4], "base_model.model.head.bias": [3]}
# The built-in digits MLP (docs/protocol.md, "Worked example: digits").
DIGITS_MODULES = {"base_model.model.fc1": [64, 128], "base_model.model.fc2": [128, 128]}
DIGITS_HEAD = {"base_model.model.fc3.weight": [10, 128], "base_model.model.fc3.bias": [10]}
DIGITS_MODEL = {
    "source": "flaas:digits",
    "task_type": "SEQ_CLS",
    "target_modules": ["fc1", "fc2"],
    "modules_to_save": ["fc3"],
}
# Its model identity: the SHA-256 of this canonical config (docs/protocol.md, "Enrol").
DIGITS_CONFIG = (
    '{"d_in":64,"hidden":128,"model_type":"flaas-mlp","num_labels":10,"pretrain":{"batch_size":32,'
    '"dataset":"digits","epochs":10,"head_seed":0,"lr":0.001,"optimizer":"adam",'
    '"relabel":"swap-pairs","seed":0,"split":"public-16%"}}'
)
# Spread-out statistics, so that AutoRank gives different ranks.
STATS = [
    {"n_samples": 12, "label_entropy": 0.1, "gini_simpson": 0.1, "loss_entropy": 0.1},
    {"n_samples": 600, "label_entropy": 0.6, "gini_simpson": 0.5, "loss_entropy": 0.5},
    {"n_samples": 9000, "label_entropy": 0.99, "gini_simpson": 0.9, "loss_entropy": 0.9},
]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def job_spec(**overrides: Any) -> dict[str, Any]:
    """Three clients, two rounds, RBLA over a hand-written layout with a shared head."""
    spec: dict[str, Any] = {
        "name": "protocol",
        "modules": MODULES,
        "extra": HEAD,
        "strategy": "rbla",
        "rank": {"policy": "autorank", "r_min": 2, "r_max": 8},
        "rounds": 2,
        "enrolment": {"min_clients": 3, "target_clients": 3, "timeout_s": 300},
        "round": {"timeout_s": 300},
        "seed": 11,
    }
    spec.update(overrides)
    return spec


def create_job(live: LiveCoordinator, **overrides: Any) -> dict[str, Any]:
    with live.operator() as operator:
        response = operator.post("/api/v1/jobs", json=job_spec(**overrides))
    assert response.status_code == 201, response.text
    job: dict[str, Any] = response.json()
    return job


def enrol(http: httpx.Client, job: Mapping[str, Any], index: int, **body: Any) -> httpx.Response:
    payload = {"stats": STATS[index % len(STATS)], "name": f"device-{index}", **body}
    return http.post(
        f"/api/v1/jobs/{job['id']}/clients", json=payload, headers=bearer(job["join_token"])
    )


@dataclass
class Device:
    """An enrolled client: its credential, and the calls it makes with it."""

    http: httpx.Client
    client_id: str
    credential: str

    @property
    def auth(self) -> dict[str, str]:
        return bearer(self.credential)

    def task(self, wait: float = 0.0) -> dict[str, Any]:
        params = {"wait": wait} if wait else None
        response = self.http.get(TASK, params=params, headers=self.auth, timeout=wait + 30)
        assert response.status_code == 200, response.text
        answer: dict[str, Any] = response.json()
        return answer

    def download(self, url: str) -> bytes:
        response = self.http.get(url, headers=self.auth)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/octet-stream"
        assert int(response.headers["content-length"]) == len(response.content)
        return response.content

    def upload(
        self,
        url: str,
        body: bytes,
        *,
        n_samples: str | None = "10",
        sha256: bool = True,
        metrics: Mapping[str, float] | str | None = None,
    ) -> httpx.Response:
        headers = {**self.auth, "Content-Type": "application/octet-stream"}
        if n_samples is not None:
            headers["Flaas-Num-Samples"] = n_samples
        if sha256:
            headers["Flaas-Content-Sha256"] = wire.sha256(body)
        if metrics is not None:
            headers["Flaas-Metrics"] = metrics if isinstance(metrics, str) else json.dumps(metrics)
        return self.http.put(url, content=body, headers=headers)


def enrolled(http: httpx.Client, job: Mapping[str, Any], index: int, **body: Any) -> Device:
    response = enrol(http, job, index, **body)
    assert response.status_code == 201, response.text
    answer = response.json()
    return Device(http, answer["client_id"], answer["credential"])


def started_job(
    live: LiveCoordinator, http: httpx.Client, clients: int = 3, **overrides: Any
) -> tuple[dict[str, Any], list[Device]]:
    """A job whose last enrolment (its target) started it: round 1 is open."""
    enrolment = {"min_clients": clients, "target_clients": clients, "timeout_s": 300}
    job = create_job(live, enrolment=enrolment, **overrides)
    return job, [enrolled(http, job, i) for i in range(clients)]


def update_tensors(
    task: Mapping[str, Any],
    modules: Mapping[str, list[int]] = MODULES,
    extra: Mapping[str, list[int]] = HEAD,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Random tensors of exactly the task's ``shared_parts`` at its rank (docs/protocol.md,
    "Tensor layout"): what a client trained, as the coordinator expects it."""
    rank, parts = int(task["rank"]), set(task["shared_parts"])
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {}
    for module, (d_in, d_out) in modules.items():
        if "lora_A" in parts:
            tensors[f"{module}.lora_A.weight"] = rng.standard_normal((rank, d_in))
        if "lora_B" in parts:
            tensors[f"{module}.lora_B.weight"] = rng.standard_normal((d_out, rank))
    if "extra" in parts:
        for key, shape in extra.items():
            tensors[key] = rng.standard_normal(tuple(shape))
    return {key: value.astype(np.float32) for key, value in tensors.items()}


def lora_scale(task: Mapping[str, Any]) -> float:
    """s = lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA (docs/protocol.md)."""
    rank = float(task["rank"])
    return float(task["lora_alpha"]) / (np.sqrt(rank) if task["use_rslora"] else rank)
