"""Every upload rule answered with its 4xx through the HTTP API, and nothing lost or overwritten."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save

from tests.api.conftest import RunningJob, start_job
from tests.support import adapter_tensors, coordinator, operator, settings_for


def task_of(api: TestClient, job: RunningJob, index: int) -> dict:
    task = api.get("/api/v1/clients/me/task", headers=job.headers(index)).json()
    assert task["action"] == "train", task
    return task


def put(
    api: TestClient, job: RunningJob, index: int, body: bytes, n: str | None = "10", **headers: str
):
    task = task_of(api, job, index)
    sent = {**job.headers(index), **headers}
    if n is not None:
        sent["Flaas-Num-Samples"] = n
    return api.put(task["upload_url"], content=body, headers=sent)


def raw_safetensors(header: dict | str, data: bytes = b"") -> bytes:
    text = header if isinstance(header, str) else json.dumps(header)
    encoded = text.encode()
    return struct.pack("<Q", len(encoded)) + encoded + data


def valid(api: TestClient, job: RunningJob, index: int) -> dict[str, torch.Tensor]:
    return adapter_tensors(task_of(api, job, index)["rank"])


def test_valid_upload_is_accepted_and_identical_retry_is_200(
    api: TestClient, running: RunningJob
) -> None:
    body = save(valid(api, running, 0))
    first = put(api, running, 0, body)
    assert first.status_code == 201, first.text
    again = put_to(api, running, 0, first.json()["round_id"], body)
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    different = put_to(
        api,
        running,
        0,
        first.json()["round_id"],
        save(adapter_tensors(first.json()["rank"], seed=9)),
    )
    assert different.status_code == 409
    assert "already accepted" in different.json()["detail"]
    detail = api.get(f"/api/v1/jobs/{running.id}/rounds/1", headers=operator(api)).json()
    accepted = [u for u in detail["updates"] if u["status"] == "accepted"]
    assert len(accepted) == 1 and accepted[0]["sha256"] == first.json()["sha256"]


def put_to(api: TestClient, job: RunningJob, index: int, round_id: str, body: bytes):
    return api.put(
        f"/api/v1/rounds/{round_id}/update",
        content=body,
        headers={**job.headers(index), "Flaas-Num-Samples": "10"},
    )


@pytest.mark.parametrize(
    ("mutate", "tensor", "phrase"),
    [
        (
            lambda t, r: {**t, "base_model.model.fc3.lora_A.weight": torch.zeros(r, 8)},
            "base_model.model.fc3.lora_A.weight",
            "not allowed",
        ),
        (
            lambda t, r: {k: v for k, v in t.items() if k != "base_model.model.fc1.lora_B.weight"},
            "base_model.model.fc1.lora_B.weight",
            "missing",
        ),
        (
            lambda t, r: {**t, "base_model.model.fc1.lora_A.weight": torch.zeros(r + 1, 8)},
            "base_model.model.fc1.lora_A.weight",
            "shape",
        ),
        (
            lambda t, r: {**t, "base_model.model.fc2.lora_B.weight": torch.zeros(4, r, 1)},
            "base_model.model.fc2.lora_B.weight",
            "shape",
        ),
        (
            lambda t, r: {
                **t,
                "base_model.model.fc1.lora_A.weight": torch.zeros(r, 8, dtype=torch.float64),
            },
            "base_model.model.fc1.lora_A.weight",
            "F64",
        ),
        (
            lambda t, r: {
                **t,
                "base_model.model.fc1.lora_A.weight": torch.full((r, 8), float("nan")),
            },
            "base_model.model.fc1.lora_A.weight",
            "NaN",
        ),
        (
            lambda t, r: {
                **t,
                "base_model.model.fc2.lora_B.weight": torch.full(
                    (4, r), float("inf"), dtype=torch.bfloat16
                ),
            },
            "base_model.model.fc2.lora_B.weight",
            "Inf",
        ),
    ],
    ids=["unknown-key", "missing-B", "wrong-rank", "not-2d", "dtype", "nan", "inf-bf16"],
)
def test_contract_violations_are_422_naming_the_tensor(
    api: TestClient, running: RunningJob, mutate, tensor: str, phrase: str
) -> None:
    rank = task_of(api, running, 0)["rank"]
    response = put(api, running, 0, save(mutate(adapter_tensors(rank), rank)))
    assert response.status_code == 422, response.text
    assert response.json()["tensor"] == tensor
    assert phrase.lower() in response.json()["detail"].lower()
    detail = api.get(f"/api/v1/jobs/{running.id}/rounds/1", headers=operator(api)).json()
    mine = next(u for u in detail["updates"] if u["client_id"] == running.clients[0]["client_id"])
    assert mine["status"] == "pending" and mine["rejections"] == 1 and mine["last_rejection"]


def test_duplicate_keys_in_the_header_are_rejected(api: TestClient, running: RunningJob) -> None:
    key = "base_model.model.fc1.lora_A.weight"
    entry = '{"dtype": "F32", "shape": [1, 1], "data_offsets": [0, 4]}'
    text = f'{{"{key}": {entry}, "{key}": {entry}}}'
    response = put(api, running, 0, raw_safetensors(text, b"\0" * 4))
    assert response.status_code == 422
    assert "repeats the key" in response.json()["detail"]


def test_garbage_and_truncated_bodies_are_422(api: TestClient, running: RunningJob) -> None:
    assert put(api, running, 0, b"not a safetensors file").status_code == 422
    body = save(valid(api, running, 0))
    assert put(api, running, 0, body[:-3]).status_code == 422
    assert put(api, running, 0, b"").status_code == 422


def test_header_size_cap_is_413(database_url: str, tmp_path) -> None:
    settings = settings_for(database_url, tmp_path / "adapters", max_header_bytes=2048)
    with coordinator(settings) as api:
        job = start_job(api)
        response = put(api, job, 0, raw_safetensors("{" + " " * 4096 + "}"))
        assert response.status_code == 413


def test_body_size_cap_is_413(database_url: str, tmp_path) -> None:
    settings = settings_for(database_url, tmp_path / "adapters", max_upload_bytes=4096)
    with coordinator(settings) as api:
        job = start_job(api)
        response = put(api, job, 0, b"\0" * 5000)
        assert response.status_code == 413
        chunked = api.put(
            task_of(api, job, 0)["upload_url"],
            content=iter([b"\0" * 3000, b"\0" * 3000]),
            headers={**job.headers(0), "Flaas-Num-Samples": "3"},
        )
        assert chunked.status_code == 413


@pytest.mark.parametrize(
    ("n", "metrics", "phrase"),
    [
        (None, None, "required"),
        ("zero", None, "integer"),
        ("0", None, "[1,"),
        ("10", "[1, 2]", "object"),
        ("10", '{"acc": "high"}', "number"),
        ("10", "{bad json", "JSON"),
    ],
)
def test_bad_sample_counts_and_metrics_are_422(
    api: TestClient, running: RunningJob, n, metrics, phrase
) -> None:
    body = save(valid(api, running, 0))
    headers = {"Flaas-Metrics": metrics} if metrics else {}
    response = put(api, running, 0, body, n=n, **headers)
    assert response.status_code == 422
    assert phrase in response.json()["detail"]


def test_unassigned_unknown_and_foreign_rounds(api: TestClient, running: RunningJob) -> None:
    other = start_job(api)
    round_id = task_of(api, running, 0)["round_id"]
    body = save(valid(api, other, 0))
    foreign = put_to(api, other, 0, round_id, body)
    assert foreign.status_code == 403
    unknown = put_to(api, running, 0, "00000000-0000-0000-0000-000000000000", body)
    assert unknown.status_code == 404
    assert (
        api.get(f"/api/v1/rounds/{round_id}/adapter", headers=other.headers(0)).status_code == 403
    )


def test_late_upload_is_410(api: TestClient, running: RunningJob) -> None:
    task = task_of(api, running, 0)
    body = save(adapter_tensors(task["rank"]))
    assert api.post(f"/api/v1/jobs/{running.id}/cancel", headers=operator(api)).status_code == 200
    late = api.put(
        task["upload_url"], content=body, headers={**running.headers(0), "Flaas-Num-Samples": "10"}
    )
    assert late.status_code == 410
    assert api.post(f"/api/v1/jobs/{running.id}/cancel", headers=operator(api)).status_code == 409
