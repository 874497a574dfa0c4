"""docs/protocol.md, "Download the adapter" and "A round", against a live coordinator over raw
HTTP: the digits layout by rank, the folded scale, and a whole round through aggregation to
the next round's adapter, computed here from the documented rules."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import httpx
import numpy as np

from tests.live import LiveCoordinator
from tests.protocol.device import (
    DIGITS_CONFIG,
    DIGITS_HEAD,
    DIGITS_MODEL,
    DIGITS_MODULES,
    HEAD,
    MODULES,
    Device,
    bearer,
    create_job,
    enrol,
    enrolled,
    lora_scale,
    started_job,
    update_tensors,
)
from tests.protocol.wire import decode, encode, header_of


def test_a_digits_device_proves_its_model_and_gets_the_adapter_cut_to_its_rank(
    live: LiveCoordinator, http: httpx.Client
) -> None:
    job = create_job(
        live,
        model=DIGITS_MODEL,
        modules={},
        extra={},
        rank={"policy": "autorank", "r_min": 2, "r_max": 16},
        lora={"lora_alpha": 16.0},  # s = 16 / r: every rank has its own scale
    )
    model = http.get(f"/api/v1/jobs/{job['id']}/model", headers=bearer(job["join_token"]))
    sha = model.json()["model"]["config_sha256"]
    assert sha == hashlib.sha256(DIGITS_CONFIG.encode()).hexdigest()
    wrong = enrol(http, job, 0, model_sha256="0" * 64)
    assert wrong.status_code == 409 and "model" in wrong.json()["detail"]
    devices = [enrolled(http, job, i, model_sha256=sha) for i in range(3)]

    tasks = [device.task() for device in devices]
    assert len({t["rank"] for t in tasks}) > 1, "AutoRank gave every device one rank"
    received: list[dict[str, np.ndarray]] = []
    for device, task in zip(devices, tasks, strict=True):
        assert task["model"]["source"] == "flaas:digits" and task["model"]["config_sha256"] == sha
        assert task["shared_parts"] == ["extra", "lora_A", "lora_B"]
        data = device.download(task["adapter_url"])
        header = header_of(data)
        assert json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])["__metadata__"] == {
            "format": "pt"
        }
        r = task["rank"]
        # Round 1 of a model's job: the head comes from the device's own base, not the wire.
        assert {k: (v["dtype"], v["shape"]) for k, v in header.items()} == {
            "base_model.model.fc1.lora_A.weight": ("F32", [r, 64]),
            "base_model.model.fc1.lora_B.weight": ("F32", [128, r]),
            "base_model.model.fc2.lora_A.weight": ("F32", [r, 128]),
            "base_model.model.fc2.lora_B.weight": ("F32", [128, r]),
        }
        tensors = decode(data)
        assert not tensors["base_model.model.fc1.lora_B.weight"].any()  # B = 0: dW = 0
        received.append(tensors)
        mine = http.get("/api/v1/clients/me/adapter", headers=device.auth)
        assert mine.status_code == 200 and mine.content == data  # the newest: round 0's

    # One global adapter, folded: sqrt(s_k) A_k is the first r_k rows of the same A'.
    widest = max(range(3), key=lambda i: tasks[i]["rank"])
    folded = received[widest]["base_model.model.fc2.lora_A.weight"] * np.sqrt(
        lora_scale(tasks[widest])
    )
    for task, tensors in zip(tasks, received, strict=True):
        mine = tensors["base_model.model.fc2.lora_A.weight"] * np.sqrt(lora_scale(task))
        np.testing.assert_allclose(mine, folded[: task["rank"]], rtol=1e-6)

    # The documented digits layout is the one the coordinator expects back.
    for device, task in zip(devices, tasks, strict=True):
        body = encode(update_tensors(task, DIGITS_MODULES, DIGITS_HEAD))
        assert device.upload(task["upload_url"], body).status_code == 201


def rbla(
    uploads: list[tuple[dict[str, Any], dict[str, np.ndarray], int]],
    previous: dict[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """The folded global adapter after RBLA (docs/algorithms.md): slice i of A' and B' is the
    sample-weighted mean of sqrt(s_k) times the uploads that have it; the head the weighted
    mean; a slice no upload has keeps its previous value."""
    result = {key: value.astype(np.float64).copy() for key, value in previous.items()}
    for key in previous:
        if key in HEAD:
            total = sum(n for _, _, n in uploads)
            result[key] = sum(n * tensors[key] for _, tensors, n in uploads) / total
            continue
        slices = previous[key].shape[0 if key.endswith("lora_A.weight") else 1]
        for i in range(slices):
            having = [(t, u, n) for t, u, n in uploads if t["rank"] > i]
            if not having:
                continue
            weight = sum(n for _, _, n in having)
            values = [n * np.sqrt(lora_scale(t)) * _slice(u[key], key, i) for t, u, n in having]
            if key.endswith("lora_A.weight"):
                result[key][i, :] = sum(values) / weight
            else:
                result[key][:, i] = sum(values) / weight
    return result


def _slice(tensor: np.ndarray, key: str, i: int) -> np.ndarray:
    return tensor[i, :] if key.endswith("lora_A.weight") else tensor[:, i]


def test_a_whole_round_aggregates_and_the_next_round_starts_from_it(
    live: LiveCoordinator, http: httpx.Client
) -> None:
    job, devices = started_job(live, http)
    tasks = [device.task() for device in devices]
    with live.operator() as operator:
        initial = decode(operator.get(f"/api/v1/jobs/{job['id']}/adapter?round=0").content)
    assert {k: list(v.shape) for k, v in initial.items() if k in HEAD} == HEAD
    uploads = []
    for index, (device, task) in enumerate(zip(devices, tasks, strict=True)):
        tensors = update_tensors(task, seed=index)
        n_samples = 10 * (index + 1)
        answer = device.upload(task["upload_url"], encode(tensors), n_samples=str(n_samples))
        assert answer.status_code == 201, answer.text
        uploads.append((task, tensors, n_samples))
    expected = rbla(uploads, initial)

    nexts = [device.task(wait=20) for device in devices]  # held until round 2 opens
    for device, task in zip(devices, nexts, strict=True):
        assert task["action"] == "train" and task["round_number"] == 2
        got = decode(device.download(task["adapter_url"]))
        r, unfold = task["rank"], np.sqrt(lora_scale(task))
        assert set(got) == set(expected)
        for key, value in got.items():
            if key in HEAD:
                want = expected[key]
            elif key.endswith("lora_A.weight"):
                want = expected[key][:r, :] / unfold
            else:
                want = expected[key][:, :r] / unfold
            np.testing.assert_allclose(value, want, rtol=1e-5, atol=1e-6, err_msg=key)

    with live.operator() as operator:
        closed = operator.get(f"/api/v1/jobs/{job['id']}/rounds/1").json()
    assert closed["status"] == "closed" and closed["global_adapter"]["n_updates"] == 3
    assert closed["global_adapter"]["total_samples"] == 60
    # An identical retry after the round closed is still answered 200: nothing is lost.
    first = devices[0].upload(tasks[0]["upload_url"], encode(uploads[0][1]), n_samples="10")
    assert first.status_code == 200

    for index, (device, task) in enumerate(zip(devices, nexts, strict=True)):
        body = encode(update_tensors(task, seed=10 + index))
        assert device.upload(task["upload_url"], body).status_code == 201
    finished = [device.task(wait=20) for device in devices]
    assert all(t == {"action": "finished", "status": "finished", "reason": None} for t in finished)
    assert all(d.http.get("/api/v1/clients/me/adapter", headers=d.auth).status_code == 200
               for d in devices)  # fmt: skip


def test_modules_and_extras_of_a_hand_written_job_travel_as_named(
    live: LiveCoordinator, http: httpx.Client
) -> None:
    _, devices = started_job(live, http, clients=1)
    device: Device = devices[0]
    task = device.task()
    header = header_of(device.download(task["adapter_url"]))
    r = task["rank"]
    want = {f"{m}.lora_A.weight": [r, d_in] for m, (d_in, _) in MODULES.items()}
    want |= {f"{m}.lora_B.weight": [d_out, r] for m, (_, d_out) in MODULES.items()}
    want |= HEAD  # a hand-written job sends its shared extras from round 1 on
    assert {k: v["shape"] for k, v in header.items()} == want
