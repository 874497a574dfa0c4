"""A whole job through the API (TestClient): enrol, train tasks, uploads, aggregation, finish."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load, save

from server.services import adapters
from tests.api.conftest import RunningJob
from tests.support import adapter_tensors, bearer, job_spec, operator, stats


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met in time")


def train_round(api: TestClient, job: RunningJob, seed: int) -> list[dict]:
    """Every sampled client fetches its task and adapter and uploads a random update."""
    results = []
    for index, _client in enumerate(job.clients):
        task = api.get("/api/v1/clients/me/task", headers=job.headers(index)).json()
        if task["action"] != "train":
            continue
        adapter = api.get(task["adapter_url"], headers=job.headers(index))
        assert adapter.status_code == 200
        received = load(adapter.content)
        rank = task["rank"]
        assert received["base_model.model.fc1.lora_A.weight"].shape == (rank, 8)
        assert received["base_model.model.fc1.lora_B.weight"].shape == (6, rank)
        body = save(adapter_tensors(rank, seed=seed + index))
        response = api.put(
            task["upload_url"],
            content=body,
            headers={
                **job.headers(index),
                "Flaas-Num-Samples": str(10 * (index + 1)),
                "Flaas-Metrics": '{"val_accuracy": 0.5, "train_loss": 1.25}',
            },
        )
        assert response.status_code == 201, response.text
        results.append(response.json())
    return results


def test_job_runs_to_the_end(api: TestClient, running: RunningJob) -> None:
    job = api.get(f"/api/v1/jobs/{running.id}", headers=operator(api)).json()
    assert job["status"] == "running"
    assert job["current_round"] == 1
    ranks = [
        c["rank"]
        for c in api.get(f"/api/v1/jobs/{running.id}/clients", headers=operator(api)).json()[
            "items"
        ]
    ]
    assert all(2 <= r <= 8 for r in ranks)
    assert len(set(ranks)) > 1, "AutoRank should spread different clients over the rank range"

    for number in (1, 2):
        uploaded = train_round(api, running, seed=100 * number)
        assert len(uploaded) == 3
        detail = wait_for(
            lambda n=number: (
                (
                    r := api.get(
                        f"/api/v1/jobs/{running.id}/rounds/{n}", headers=operator(api)
                    ).json()
                )["status"]
                == "closed"
                and r
            )
        )
        assert detail["accepted"] == 3
        assert detail["global_adapter"]["n_updates"] == 3
        assert detail["aggregation"]["updates"] == 3
        assert len(detail["aggregation"]["coverage"]) == 8

    job = wait_for(
        lambda: (
            (j := api.get(f"/api/v1/jobs/{running.id}", headers=operator(api)).json())["status"]
            == "finished"
            and j
        )
    )
    assert job["current_round"] == 2
    for index in range(3):
        task = api.get("/api/v1/clients/me/task", headers=running.headers(index)).json()
        assert task == {"action": "finished", "status": "finished", "reason": None}

    rounds = api.get(f"/api/v1/jobs/{running.id}/rounds", headers=operator(api)).json()
    assert [r["number"] for r in rounds["items"]] == [0, 1, 2]
    final = api.get(f"/api/v1/jobs/{running.id}/adapter", headers=operator(api))
    assert final.status_code == 200
    tensors = load(final.content)
    assert tensors["base_model.model.fc1.lora_A.weight"].shape == (8, 8)
    assert all(torch.isfinite(t).all() for t in tensors.values())
    initial = load(
        api.get(f"/api/v1/jobs/{running.id}/adapter?round=0", headers=operator(api)).content
    )
    assert not torch.equal(
        initial["base_model.model.fc1.lora_A.weight"], tensors["base_model.model.fc1.lora_A.weight"]
    )


def test_enrolled_client_waits_until_enrolment_closes(api: TestClient) -> None:
    spec = {"enrolment": {"min_clients": 2, "target_clients": 3, "timeout_s": 300}}
    pending = api.post("/api/v1/jobs", json=job_spec(**spec), headers=operator(api)).json()
    enrolled = api.post(
        f"/api/v1/jobs/{pending['id']}/clients",
        json={"stats": {"n_samples": 5}},
        headers=bearer(pending["join_token"]),
    ).json()
    assert enrolled["rank"] is None
    task = api.get("/api/v1/clients/me/task", headers=bearer(enrolled["credential"])).json()
    assert task["action"] == "wait" and task["retry_after"] > 0
    # The waiting client is told the count, the minimum, the target and the deadline.
    deadline = datetime.fromisoformat(pending["enrolment_deadline_at"]).astimezone(UTC)
    until = f"{deadline:%H:%M:%S} UTC"
    if deadline.date() != datetime.now(UTC).date():
        until = f"{deadline:%Y-%m-%d} {until}"
    assert task["reason"] == (
        f"enrolment is open: 1 of 2 clients needed have enrolled, until {until}; "
        "it starts at once with 3"
    )
    api.post(
        f"/api/v1/jobs/{pending['id']}/clients",
        json={"stats": {"n_samples": 7}},
        headers=bearer(pending["join_token"]),
    ).raise_for_status()
    task = api.get("/api/v1/clients/me/task", headers=bearer(enrolled["credential"])).json()
    assert task["reason"] == (
        f"enrolment is open: 2 clients have enrolled (2 needed); the job starts at {until}, "
        "or as soon as 3 have enrolled"
    )


def enrol(api: TestClient, job: dict, name: str | None, n: int = 20) -> Any:
    return api.post(
        f"/api/v1/jobs/{job['id']}/clients",
        json={"stats": stats(n, entropy=0.1 + n / 200), "name": name},
        headers=bearer(job["join_token"]),
    )


def test_a_seed_samples_and_ranks_the_same_names_whatever_their_ids(api: TestClient) -> None:
    spec = job_spec(
        sampling={"fraction": 0.5},
        enrolment={"min_clients": 6, "target_clients": 6, "timeout_s": 300},
    )
    chosen = []
    for order in (range(6), reversed(range(6))):  # other ids, another enrolment order
        job = api.post("/api/v1/jobs", json=spec, headers=operator(api)).json()
        for i in order:
            assert enrol(api, job, f"device-{i}", n=20 + 30 * i).status_code == 201
        clients = api.get(f"/api/v1/jobs/{job['id']}/clients", headers=operator(api)).json()
        names = {c["id"]: c["name"] for c in clients["items"]}
        detail = api.get(f"/api/v1/jobs/{job['id']}/rounds/1", headers=operator(api)).json()
        sampled = sorted(names[u["client_id"]] for u in detail["updates"])
        ranks = sorted((c["name"], c["rank"], c["closeness"]) for c in clients["items"])
        chosen.append((sampled, ranks))
    assert len(chosen[0][0]) == 3
    assert chosen[1] == chosen[0]


def test_a_name_is_taken_once_per_job(api: TestClient) -> None:
    spec = job_spec(enrolment={"min_clients": 2, "target_clients": 5, "timeout_s": 300})
    job, other = (api.post("/api/v1/jobs", json=spec, headers=operator(api)).json() for _ in "ab")
    assert enrol(api, job, "phone").status_code == 201
    again = enrol(api, job, "phone")
    assert again.status_code == 409, again.text
    assert "already has a client named 'phone'" in again.json()["detail"]
    assert "state directory" in again.json()["detail"]
    assert enrol(api, other, "phone").status_code == 201  # names are per job
    assert [enrol(api, job, None).status_code for _ in range(2)] == [201, 201]
    listed = api.get(f"/api/v1/jobs/{job['id']}/clients", headers=operator(api)).json()
    assert listed["total"] == 3


def test_a_train_answer_carries_a_small_adapter(
    api: TestClient, running: RunningJob, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = api.app.state.runtime.settings  # type: ignore[attr-defined]
    ask = "/api/v1/clients/me/task"
    trainees = [
        (i, task)
        for i in range(len(running.clients))
        if (task := api.get(ask, headers=running.headers(i)).json())["action"] == "train"
    ]
    assert len(trainees) >= 2
    (first, task), (second, _) = trainees[:2]
    served = api.get(task["adapter_url"], headers=running.headers(first)).content
    assert base64.b64decode(task["adapter"]) == served  # the bytes the download sends
    # At the limit it is still carried (a client this process knows, from the shared read)...
    monkeypatch.setattr(settings, "inline_adapter_max_bytes", len(served))
    assert base64.b64decode(api.get(ask, headers=running.headers(first)).json()["adapter"]) == (
        served
    )
    # ...one byte below it, or with the limit at 0, the client downloads it.
    for limit in (len(served) - 1, 0):
        monkeypatch.setattr(settings, "inline_adapter_max_bytes", limit)
        answer = api.get(ask, headers=running.headers(second)).json()
        assert answer["action"] == "train" and answer["adapter"] is None
        assert answer["adapter_url"]


def test_a_rounds_small_cut_is_made_once_per_rank_and_not_stored(
    api: TestClient, running: RunningJob, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = api.app.state.runtime  # type: ignore[attr-defined]
    cuts: list[int] = []
    real_cut = adapters._cut
    monkeypatch.setattr(adapters, "_cut", lambda *a: cuts.append(a[3]) or real_cut(*a))
    written: list[str] = []
    real_put = runtime.store.put_bytes
    monkeypatch.setattr(
        runtime.store, "put_bytes", lambda k, d: written.append(k) or real_put(k, d)
    )
    answers = [
        api.get("/api/v1/clients/me/task", headers=running.headers(i)).json()
        for i in range(len(running.clients))
        for _ in range(2)  # each client asks twice
    ]
    trainees = [answer for answer in answers if answer["action"] == "train"]
    assert len(trainees) >= 4 and all(answer["adapter"] for answer in trainees)
    assert sorted(cuts) == sorted({answer["rank"] for answer in trainees})
    assert written == []  # the cut travels in the answers; a download would write it
