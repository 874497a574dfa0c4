"""docs/protocol.md, "Upload the update", against a live coordinator over raw HTTP: an accepted
update, idempotent retries, each refusal a client can meet, and FedSA's private B."""

from __future__ import annotations

import uuid

import httpx
import numpy as np

from tests.live import LiveCoordinator
from tests.protocol.conftest import MAX_HEADER_BYTES, MAX_UPLOAD_BYTES
from tests.protocol.device import HEAD, MODULES, bearer, started_job, update_tensors
from tests.protocol.wire import encode, header_of, sha256


def test_an_update_is_accepted_once_and_an_identical_retry_is_answered_200(
    live: LiveCoordinator, http: httpx.Client
) -> None:
    _, devices = started_job(live, http)
    device = devices[0]
    task = device.task()
    body = encode(update_tensors(task), {"rank": str(task["rank"])})
    accepted = device.upload(task["upload_url"], body, n_samples="37", metrics={"train_loss": 0.4})
    assert accepted.status_code == 201, accepted.text
    update = accepted.json()
    assert update["status"] == "accepted" and update["round_id"] == task["round_id"]
    assert update["client_id"] == device.client_id and update["rank"] == task["rank"]
    assert update["n_samples"] == 37 and update["metrics"] == {"train_loss": 0.4}
    assert update["sha256"] == sha256(body) and update["size_bytes"] == len(body)

    # Lost answer: the same bytes again, with or without the declared hash.
    for declared in (True, False):
        again = device.upload(task["upload_url"], body, n_samples="37", sha256=declared)
        assert again.status_code == 200, again.text
        assert again.json()["id"] == update["id"]
    different = device.upload(task["upload_url"], encode(update_tensors(task, seed=1)))
    assert different.status_code == 409 and "already accepted" in different.json()["detail"]


def test_half_precision_updates_are_accepted(live: LiveCoordinator, http: httpx.Client) -> None:
    _, devices = started_job(live, http)
    task = devices[1].task()
    body = encode(update_tensors(task), dtype="F16")
    assert devices[1].upload(task["upload_url"], body).status_code == 201


def test_each_broken_rule_is_a_4xx_that_names_it(live: LiveCoordinator, http: httpx.Client) -> None:
    _, devices = started_job(live, http)
    device = devices[0]
    task = device.task()
    url, rank = task["upload_url"], task["rank"]
    good = update_tensors(task)
    a_key, b_key = "base_model.model.fc1.lora_A.weight", "base_model.model.fc1.lora_B.weight"

    def refused(body: bytes, status: int = 422, **kwargs: object) -> dict[str, str]:
        answer = device.upload(url, body, **kwargs)  # type: ignore[arg-type]
        assert answer.status_code == status, (answer.status_code, answer.text)
        detail: dict[str, str] = answer.json()
        return detail

    wrong_rank = {**good, a_key: np.zeros((rank + 1, 8), np.float32)}
    assert refused(encode(wrong_rank))["tensor"] == a_key
    smuggled = {**good, "base_model.model.fc3.lora_A.weight": np.zeros((rank, 8), np.float32)}
    assert refused(encode(smuggled))["tensor"] == "base_model.model.fc3.lora_A.weight"
    half_pair = {k: v for k, v in good.items() if k != b_key}
    assert refused(encode(half_pair))["tensor"] == b_key
    no_head = {k: v for k, v in good.items() if k not in HEAD}
    assert refused(encode(no_head))["tensor"] in HEAD
    poisoned = {**good, a_key: np.full((rank, 8), np.nan, np.float32)}
    assert refused(encode(poisoned))["tensor"] == a_key
    assert "dtype 'F64'" in refused(encode(good, dtype="F64"))["detail"]
    assert "8-byte header length" in refused(b"1234")["detail"]
    valid = encode(good)
    assert "required" in refused(valid, n_samples=None)["detail"]
    for n_samples in ("0", "ten", "1.5", "+5", "1_000", "-3", ""):
        assert "Flaas-Num-Samples" in refused(valid, n_samples=n_samples)["detail"]
    for metrics in ("[1, 2]", '{"loss": "low"}', '{"loss": NaN}', "{"):
        assert "Flaas-Metrics" in refused(valid, metrics=metrics)["detail"]
    too_long = '{"train_loss":' + " " * 4096 + "0.4}"
    assert "Flaas-Metrics" in refused(valid, 413, metrics=too_long)["detail"]
    assert "limit" in refused(b"\0" * (MAX_UPLOAD_BYTES + 1), 413)["detail"]
    big_header = b"{}" + b" " * MAX_HEADER_BYTES  # trailing spaces are allowed, not this many
    assert "header" in refused(len(big_header).to_bytes(8, "little") + big_header, 413)["detail"]

    # A client that fixes its update may upload again while the round is open.
    assert device.upload(url, valid).status_code == 201
    with live.operator() as operator:
        job_id = task["job_id"]
        detail = operator.get(f"/api/v1/jobs/{job_id}/rounds/1").json()
    mine = next(u for u in detail["updates"] if u["client_id"] == device.client_id)
    # The eight files refused are on the record; refused headers were never files.
    assert mine["status"] == "accepted" and mine["rejections"] == 8


def test_an_upload_must_be_the_clients_own_and_for_a_round_it_was_sampled_for(
    live: LiveCoordinator, http: httpx.Client
) -> None:
    _, devices = started_job(live, http, sampling={"fraction": 0.5, "minimum": 1})
    tasks = [device.task() for device in devices]
    sampled = [t for t in tasks if t["action"] == "train"]
    assert len(sampled) == 2  # ceil(0.5 * 3)
    left_out = devices[next(i for i, t in enumerate(tasks) if t["action"] == "wait")]
    assert left_out.task()["reason"] == "not sampled for round 1"
    train = sampled[0]
    body = encode(update_tensors(train))
    not_sampled = left_out.upload(train["upload_url"], body)
    assert not_sampled.status_code == 409 and "not sampled" in not_sampled.json()["detail"]
    assert left_out.download(train["adapter_url"])  # the round's adapter, at its own rank

    _, strangers = started_job(live, http, clients=1)
    foreign = strangers[0].upload(train["upload_url"], body)
    assert foreign.status_code == 403 and "another job" in foreign.json()["detail"]
    foreign_download = http.get(train["adapter_url"], headers=strangers[0].auth)
    assert foreign_download.status_code == 403
    nowhere = f"/api/v1/rounds/{uuid.uuid4()}/update"
    assert left_out.upload(nowhere, body).status_code == 404
    lost = http.get(f"/api/v1/rounds/{uuid.uuid4()}/adapter", headers=left_out.auth)
    assert lost.status_code == 404
    assert left_out.upload("/api/v1/rounds/round-one/update", body).status_code == 422
    anonymous = http.put(train["upload_url"], content=body, headers={"Flaas-Num-Samples": "3"})
    assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"] == "Bearer"
    forged = http.put(train["upload_url"], content=body, headers=bearer("flc_forged"))
    assert forged.status_code == 401


def test_fedsa_clients_upload_a_alone_and_b_never_reaches_the_coordinator(
    live: LiveCoordinator, http: httpx.Client
) -> None:
    job, devices = started_job(live, http, strategy="fedsa", rounds=2)
    a_keys = {f"{module}.lora_A.weight" for module in MODULES}
    for round_number in (1, 2):
        for index, device in enumerate(devices):
            task = device.task(wait=20)
            assert task["action"] == "train" and task["round_number"] == round_number
            assert task["shared_parts"] == ["lora_A"] and task["frozen_parts"] == []
            received = header_of(device.download(task["adapter_url"]))
            assert set(received) == a_keys  # no B, no head: both stay on the device
            for key in a_keys:
                assert received[key]["shape"][0] == task["rank"]
            trained = update_tensors({**task, "shared_parts": ["lora_A", "lora_B", "extra"]})
            with_b = device.upload(task["upload_url"], encode(trained))
            assert with_b.status_code == 422, with_b.text
            assert ".lora_B.weight" in with_b.json()["tensor"] or with_b.json()["tensor"] in HEAD
            only_a = {k: v for k, v in trained.items() if k in a_keys}
            assert device.upload(task["upload_url"], encode(only_a)).status_code == 201, index
    assert devices[0].task(wait=20)["action"] == "finished"
    with live.operator() as operator:
        for round_number in (1, 2):
            stored = operator.get(f"/api/v1/jobs/{job['id']}/adapter?round={round_number}")
            assert stored.status_code == 200
            assert set(header_of(stored.content)) == a_keys
