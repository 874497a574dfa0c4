"""docs/protocol.md, "Enrol" and "Get the task", against a live coordinator over raw HTTP:
the job's model, enrolment and each of its refusals, every task kind, and the long-poll."""

from __future__ import annotations

import secrets
import threading
import uuid
from typing import Any

import httpx

from tests.live import LiveCoordinator
from tests.protocol.device import (
    STATS,
    TASK,
    Device,
    bearer,
    create_job,
    enrol,
    enrolled,
    started_job,
    update_tensors,
)
from tests.protocol.wire import encode


def test_the_job_model_is_read_with_the_join_token(
    live: LiveCoordinator, http: httpx.Client
) -> None:
    job = create_job(live, training={"epochs": 2, "lr": 0.05, "batch_size": 8})
    answer = http.get(f"/api/v1/jobs/{job['id']}/model", headers=bearer(job["join_token"]))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["job_id"] == job["id"] and body["strategy"] == "rbla"
    assert body["model"] is None  # the layout was written by hand
    assert body["training"]["epochs"] == 2 and body["training"]["lr"] == 0.05

    for path in (f"/api/v1/jobs/{job['id']}/model", f"/api/v1/jobs/{uuid.uuid4()}/model"):
        refused = http.get(path, headers=bearer("flj_not-the-token"))
        assert refused.status_code == 401, refused.text
        assert refused.headers["www-authenticate"] == "Bearer"
        assert refused.json()["detail"] == "invalid join token for this job"


def test_enrolment_answers_a_credential_and_no_rank_while_enrolment_is_open(
    live: LiveCoordinator, http: httpx.Client
) -> None:
    job = create_job(live)
    answer = enrol(http, job, 0)
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert set(body) == {"client_id", "job_id", "credential", "rank"}
    assert body["job_id"] == job["id"] and body["rank"] is None
    assert body["credential"].startswith("flc_")
    # Criteria a device cannot compute are null.
    bare = {"n_samples": 5, "label_entropy": None, "gini_simpson": None, "loss_entropy": None}
    assert enrol(http, job, 1, stats=bare).status_code == 201


def test_enrolment_refusals_say_what_to_change(live: LiveCoordinator, http: httpx.Client) -> None:
    job = create_job(live)
    path = f"/api/v1/jobs/{job['id']}/clients"
    good: dict[str, Any] = {"stats": STATS[0]}

    assert http.post(path, json=good).status_code == 401
    assert http.post(path, json=good, headers=bearer("flj_wrong")).status_code == 401
    unknown = http.post(
        f"/api/v1/jobs/{uuid.uuid4()}/clients", json=good, headers=bearer(job["join_token"])
    )
    assert unknown.status_code == 401  # an unknown job and a wrong token answer alike

    def refused(body: Any) -> httpx.Response:
        return http.post(path, json=body, headers=bearer(job["join_token"]))

    bad_stats = {
        "label_entropy": 1.5,
        "gini_simpson": -0.1,
        "loss_entropy": "high",
        "n_samples": 0,
    }
    for field, value in bad_stats.items():
        answer = refused({"stats": {**STATS[0], field: value}})
        assert answer.status_code == 422, answer.text
        assert f"body.stats.{field}" in answer.json()["detail"]
    # Strict JSON types: a boolean or a string is not a number, a fraction not a count.
    for field, value in [("n_samples", True), ("n_samples", "12"), ("n_samples", 12.5),
                         ("label_entropy", True), ("loss_entropy", "0.5")]:  # fmt: skip
        answer = refused({"stats": {**STATS[0], field: value}})
        assert answer.status_code == 422 and f"body.stats.{field}" in answer.json()["detail"]
    assert refused({**good, "max_rank": True}).status_code == 422
    missing = {k: v for k, v in STATS[0].items() if k != "n_samples"}
    assert refused({"stats": missing}).status_code == 422
    assert refused({"stats": {**STATS[0], "accuracy": 0.5}}).status_code == 422  # unknown
    assert refused({**good, "colour": "blue"}).status_code == 422
    assert refused({**good, "max_rank": 0}).status_code == 422
    assert refused({**good, "model_sha256": "not-a-hash"}).status_code == 422
    assert refused({}).status_code == 422

    not_json = http.post(
        path,
        content=b"{not json",
        headers={**bearer(job["join_token"]), "Content-Type": "application/json"},
    )
    assert not_json.status_code == 422 and "not valid JSON" in not_json.json()["detail"]
    not_utf8 = http.post(
        path,
        content=b'{"name": "\xff"}',
        headers={**bearer(job["join_token"]), "Content-Type": "application/json"},
    )
    assert not_utf8.status_code == 400, not_utf8.text

    assert enrol(http, job, 0).status_code == 201
    taken = enrol(http, job, 0)  # the same name again
    assert taken.status_code == 409 and "already has a client named" in taken.json()["detail"]


def test_an_enrolment_with_a_drawn_credential_sent_again_gets_the_same_client(
    live: LiveCoordinator, http: httpx.Client
) -> None:
    job = create_job(live, enrolment={"min_clients": 1, "target_clients": 2, "timeout_s": 300,
                                      "allow_late_join": False})  # fmt: skip
    drawn = "flc_" + secrets.token_urlsafe(32)
    first = enrol(http, job, 0, credential=drawn)
    assert first.status_code == 201, first.text
    assert first.json()["credential"] == drawn
    # Its answer was lost: the device sends the same enrolment again, even after the job
    # started (the second device completed the cohort) and took no more late joiners.
    assert enrol(http, job, 1).status_code == 201
    again = enrol(http, job, 0, credential=drawn)
    assert again.status_code == 200, again.text
    assert again.json()["client_id"] == first.json()["client_id"]
    assert again.json()["rank"] is not None  # assigned when the job started
    with live.operator() as operator:
        listed = operator.get(f"/api/v1/jobs/{job['id']}/clients").json()["items"]
    assert len(listed) == 2  # no second client
    task = http.get("/api/v1/clients/me/task", headers=bearer(drawn))
    assert task.status_code == 200 and task.json()["action"] == "train", task.text

    # The same credential under another name, or in another job, is someone else's enrolment.
    renamed = enrol(http, job, 0, credential=drawn, name="device-renamed")
    assert renamed.status_code == 409 and "another enrolment" in renamed.json()["detail"]
    elsewhere = enrol(http, create_job(live), 0, credential=drawn)
    assert elsewhere.status_code == 409 and "another enrolment" in elsewhere.json()["detail"]
    # A drawn credential has the coordinator's format and strength.
    for weak in ("flc_short", "abc_" + secrets.token_urlsafe(32), "flc_" + "x" * 42, 123):
        assert enrol(http, job, 3, credential=weak).status_code == 422


def test_a_device_declares_its_capacity_and_late_joiners_get_a_rank_at_once(
    live: LiveCoordinator, http: httpx.Client
) -> None:
    job, devices = started_job(live, http, rank={"policy": "autorank", "r_min": 2, "r_max": 8})
    late = enrol(http, job, 5, stats=STATS[2], max_rank=3)
    assert late.status_code == 201, late.text
    assert late.json()["rank"] is not None and 2 <= late.json()["rank"] <= 3

    closed = create_job(live, enrolment={"min_clients": 1, "target_clients": 1, "timeout_s": 300,
                                         "allow_late_join": False})  # fmt: skip
    assert enrol(http, closed, 0).status_code == 201  # the target: the job starts
    too_late = enrol(http, closed, 1)
    assert too_late.status_code == 410 and "late joiners" in too_late.json()["detail"]


def test_every_task_kind_in_the_life_of_a_job(live: LiveCoordinator, http: httpx.Client) -> None:
    job = create_job(live, rounds=1, enrolment={"min_clients": 2, "target_clients": 2,
                                                "timeout_s": 300})  # fmt: skip
    first = enrolled(http, job, 0)
    waiting = first.task()
    assert waiting["action"] == "wait" and waiting["retry_after"] == 2.0
    assert waiting["reason"].startswith("enrolment is open: 1 of 2 clients")
    assert first.http.get(TASK, headers=first.auth).json() == first.task()
    mine = http.get("/api/v1/clients/me/adapter", headers=first.auth)
    assert mine.status_code == 409 and "no rank yet" in mine.json()["detail"]

    second = enrolled(http, job, 1)
    train = first.task()
    assert train["action"] == "train" and train["round_number"] == 1
    assert train["job_id"] == job["id"] and train["strategy"] == "rbla"
    assert train["adapter_url"] == f"/api/v1/rounds/{train['round_id']}/adapter"
    assert train["upload_url"] == f"/api/v1/rounds/{train['round_id']}/update"
    assert train["shared_parts"] == ["extra", "lora_A", "lora_B"] and train["frozen_parts"] == []
    assert 2 <= train["rank"] <= 8 and train["lora_alpha"] == 16.0
    assert train["use_rslora"] is False and train["adapter_type"] == "lora"
    assert train["seed"] == 11 and train["model"] is None
    assert train["deadline_at"].endswith("Z")  # ISO 8601, UTC

    assert first.upload(train["upload_url"], encode(update_tensors(train))).status_code == 201
    done = first.task()
    assert done == {"action": "wait", "retry_after": 1.0,
                    "reason": "update for round 1 already accepted"}  # fmt: skip

    other = second.task()
    assert second.upload(other["upload_url"], encode(update_tensors(other))).status_code == 201
    finished = first.task(wait=20)  # the last round aggregates, and the job finishes
    assert finished == {"action": "finished", "status": "finished", "reason": None}


def test_a_cancelled_job_finishes_its_clients_and_refuses_what_they_send(
    live: LiveCoordinator, http: httpx.Client
) -> None:
    job, devices = started_job(live, http, clients=2)
    train = devices[0].task()
    with live.operator() as operator:
        assert operator.post(f"/api/v1/jobs/{job['id']}/cancel").status_code == 200
    finished = devices[0].task()
    assert finished["action"] == "finished" and finished["status"] == "cancelled"
    late = devices[0].upload(train["upload_url"], encode(update_tensors(train)))
    assert late.status_code == 410 and "no longer accepts updates" in late.json()["detail"]
    assert enrol(http, job, 7).status_code == 410


def test_task_requests_need_the_client_credential_and_a_valid_wait(
    live: LiveCoordinator, http: httpx.Client
) -> None:
    job = create_job(live)
    device = enrolled(http, job, 0)
    assert http.get(TASK).status_code == 401
    assert http.get(TASK, headers=bearer(job["join_token"])).status_code == 401
    assert http.get(TASK, headers=bearer("flc_forged")).status_code == 401
    for wait in ("-1", "inf", "soon"):
        answer = http.get(TASK, params={"wait": wait}, headers=device.auth)
        assert answer.status_code == 422 and "query.wait" in answer.json()["detail"]


class Held:
    """One long-polled task request, in a thread."""

    def __init__(self, device: Device, wait: float) -> None:
        self.answer: dict[str, Any] = {}
        self.thread = threading.Thread(target=lambda: self.answer.update(device.task(wait)))
        self.thread.start()

    def result(self) -> dict[str, Any]:
        self.thread.join(timeout=60)
        assert not self.thread.is_alive(), "the task request never came back"
        return self.answer


def test_the_long_poll_answers_when_the_round_opens(
    live: LiveCoordinator, http: httpx.Client
) -> None:
    job = create_job(live, enrolment={"min_clients": 2, "target_clients": 2, "timeout_s": 300})
    device = enrolled(http, job, 0)
    expired = device.task(wait=0.5)  # nothing changes: the wait ends, ask again at once
    assert expired["action"] == "wait" and expired["retry_after"] == 0.0

    held = Held(device, wait=25)
    held.thread.join(timeout=1.0)
    assert held.thread.is_alive(), "a task request with wait=25 was answered while it was wait"
    enrolled(http, job, 1)  # the target: the job starts and round 1 opens
    answer = held.result()
    assert answer["action"] == "train" and answer["round_number"] == 1


def test_the_long_poll_answers_when_the_job_fails(
    live: LiveCoordinator, http: httpx.Client
) -> None:
    job = create_job(live, enrolment={"min_clients": 2, "timeout_s": 1})
    device = enrolled(http, job, 0)  # one of the two needed: the job fails at the deadline
    answer = device.task(wait=25)
    assert answer["action"] == "finished" and answer["status"] == "failed"
    assert answer["reason"]
