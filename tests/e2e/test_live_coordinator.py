"""End to end over real HTTP against ``flaas serve`` (uvicorn), on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from safetensors.torch import load, save

from tests.live import LiveCoordinator, enrol_clients, running_coordinator, wait_until
from tests.support import adapter_tensors, job_spec


@pytest.fixture
def live(database_url: str, tmp_path: Path) -> Iterator[LiveCoordinator]:
    with running_coordinator(database_url, tmp_path) as coordinator:
        yield coordinator


def upload(live: LiveCoordinator, credential: str, seed: int) -> httpx.Response:
    with live.client(credential) as http:
        task = http.get("/api/v1/clients/me/task").json()
        assert task["action"] == "train", task
        received = load(http.get(task["adapter_url"]).content)
        assert received["base_model.model.fc2.lora_A.weight"].shape[0] == task["rank"]
        return http.put(
            task["upload_url"],
            content=save(adapter_tensors(task["rank"], seed=seed)),
            headers={"Flaas-Num-Samples": "25"},
        )


def round_of(live: LiveCoordinator, job_id: str, number: int) -> dict:
    with live.operator() as http:
        return http.get(f"/api/v1/jobs/{job_id}/rounds/{number}").json()


def test_full_job_over_http(live: LiveCoordinator) -> None:
    with live.operator() as http:
        job = http.post("/api/v1/jobs", json=job_spec(rounds=3)).json()
        credentials = enrol_clients(http, job, 3)
    for number in (1, 2, 3):
        for i, credential in enumerate(credentials):
            assert upload(live, credential, seed=10 * number + i).status_code == 201
        closed = wait_until(
            lambda n=number: round_of(live, job["id"], n), lambda r: r["status"] == "closed"
        )
        assert closed["global_adapter"]["n_updates"] == 3
    with live.operator() as http:
        final = wait_until(
            lambda: http.get(f"/api/v1/jobs/{job['id']}").json(),
            lambda j: j["status"] == "finished",
        )
        assert final["current_round"] == 3
        adapter = http.get(f"/api/v1/jobs/{job['id']}/adapter", params={"round": 3})
        assert adapter.status_code == 200 and len(adapter.content) == int(
            adapter.headers["content-length"]
        )
    for credential in credentials:
        with live.client(credential) as http:
            assert http.get("/api/v1/clients/me/task").json()["action"] == "finished"


def test_coordinator_killed_mid_round_loses_and_double_counts_nothing(
    live: LiveCoordinator,
) -> None:
    with live.operator() as http:
        job = http.post("/api/v1/jobs", json=job_spec(rounds=1)).json()
        credentials = enrol_clients(http, job, 3)
    first = upload(live, credentials[0], seed=1)
    second = upload(live, credentials[1], seed=2)
    assert first.status_code == second.status_code == 201

    live.kill()
    live.start()

    before = round_of(live, job["id"], 1)
    assert before["status"] == "open" and before["accepted"] == 2
    # A client that never saw its 201 sends the same bytes again: answered 200, not counted.
    with live.client(credentials[1]) as http:
        retry = http.put(
            str(second.request.url),
            content=second.request.content,
            headers={"Flaas-Num-Samples": "25"},
        )
    assert retry.status_code == 200 and retry.json()["id"] == second.json()["id"]
    third = upload(live, credentials[2], seed=3)
    assert third.status_code == 201
    closed = wait_until(lambda: round_of(live, job["id"], 1), lambda r: r["status"] == "closed")
    assert closed["global_adapter"]["n_updates"] == 3
    assert closed["global_adapter"]["total_samples"] == 75
    assert sorted(u["sha256"] for u in closed["updates"]) == sorted(
        r.json()["sha256"] for r in (first, second, third)
    )


class LosesEnrolmentAnswers(httpx.HTTPTransport):
    """A network that delivers the first ``lost`` enrolments and loses their answers."""

    def __init__(self, lost: int) -> None:
        super().__init__()
        self.lost = lost

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.method == "POST" and request.url.path.endswith("/clients") and self.lost:
            self.lost -= 1
            response.read()
            response.close()
            raise httpx.ReadError("connection reset before the answer arrived", request=request)
        return response


def test_an_sdk_client_whose_enrolment_answer_is_lost_gets_the_same_client(
    live: LiveCoordinator, tmp_path: Path
) -> None:
    from client_sdk import Client
    from client_sdk.api import ApiClient, RetryPolicy

    with live.operator() as http:
        job = http.post("/api/v1/jobs", json=job_spec(rounds=1)).json()

    def device(lost: int) -> Client:
        transport = LosesEnrolmentAnswers(lost)
        api = ApiClient(live.url, transport=transport, retry=RetryPolicy(attempts=3, base_s=0.01))
        return Client(live.url, job["id"], join_token=job["join_token"], state_dir=tmp_path,
                      name="phone-1", api=api)  # fmt: skip

    # Every attempt's answer lost: the device gives up, its drawn credential kept on disk.
    with pytest.raises(Exception, match="failed 3 times"):
        device(lost=3).join({"n_samples": 30, "label_entropy": 0.5})
    # Restarted, the network loses one more answer, then delivers: one client, the same one.
    joined = device(lost=1).join({"n_samples": 30, "label_entropy": 0.5})
    with live.operator() as http:
        clients = http.get(f"/api/v1/jobs/{job['id']}/clients").json()["items"]
    assert [(c["id"], c["name"]) for c in clients] == [(joined.client_id, "phone-1")]
    with live.client(joined.token) as http:
        assert http.get("/api/v1/clients/me/task").status_code == 200
