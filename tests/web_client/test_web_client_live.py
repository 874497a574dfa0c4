"""Browser clients (the committed bundle, run by Node) in a FedSA digits job on a real
``flaas serve``: heterogeneous AutoRank ranks, every update accepted by the coordinator's
validation, B and the head never uploaded, and a client that dies with its round-2 update
stored but unsent resumes as the same client and re-sends those bytes, counted once."""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from safetensors.numpy import load

from client_sdk.tasks.job_spec import task_job_spec
from tests.live import LiveCoordinator, running_coordinator
from tests.web_client.node import BUNDLE, require

pytestmark = pytest.mark.slow

CLIENTS, ROUNDS = 3, 3
RUNNER = Path(__file__).with_name("run_client.mjs")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveCoordinator]:
    workdir = tmp_path_factory.mktemp("coordinator")
    with running_coordinator(f"sqlite:///{workdir / 'flaas.db'}", workdir) as coordinator:
        yield coordinator


def start(
    live: LiveCoordinator, job: dict[str, Any], device: int, state: Path, **extra: str
) -> subprocess.Popen[str]:
    options = {
        "bundle": str(BUNDLE), "baseUrl": live.url, "jobId": job["id"],
        "joinToken": job["join_token"], "device": device, "devices": CLIENTS,
        "name": f"web-{device}", "stateFile": str(state), **extra,
    }  # fmt: skip
    return subprocess.Popen(
        [require("node"), str(RUNNER), json.dumps(options)], stdout=subprocess.PIPE, text=True
    )


def events(process: subprocess.Popen[str]) -> list[dict[str, Any]]:
    out, _ = process.communicate(timeout=240)
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def stored_state(path: Path) -> dict[str, Any]:
    (value,) = json.loads(path.read_text()).values()
    return dict(json.loads(value))


def test_fedsa_web_clients_finish_keep_b_and_resume_after_dying_mid_round(
    live: LiveCoordinator, tmp_path: Path
) -> None:
    spec = task_job_spec("digits", strategy="fedsa", clients=CLIENTS, rounds=ROUNDS)
    with live.operator() as http:
        job = http.post("/api/v1/jobs", json=spec).json()
    states = [tmp_path / f"device-{i}.json" for i in range(CLIENTS)]
    dying = start(live, job, 0, states[0], exitOn="round 2: uploading")
    others = [start(live, job, i, states[i]) for i in range(1, CLIENTS)]
    before = events(dying)
    assert dying.returncode == 3, before[-3:]
    left = stored_state(states[0])
    assert left["pending"]["round"] == 2

    resumed = events(start(live, job, 0, states[0]))
    finals = [resumed, *(events(p) for p in others)]
    assert all(e[-1] == {"result": {"jobStatus": "finished"}} for e in finals), finals
    assert {"type": "status", "message": "round 2: re-sending the stored update"} in resumed
    enrolled = [e for e in before + resumed if e.get("type") == "enrolled"]
    assert {e["clientId"] for e in enrolled} == {left["credentials"]["client_id"]}

    with live.operator() as http:
        assert http.get(f"/api/v1/jobs/{job['id']}").json()["status"] == "finished"
        clients = http.get(f"/api/v1/jobs/{job['id']}/clients").json()["items"]
        round_two = http.get(f"/api/v1/jobs/{job['id']}/rounds/2").json()["updates"]
    assert len(clients) == CLIENTS and all(c["rounds_contributed"] == ROUNDS for c in clients)
    assert len({c["rank"] for c in clients}) >= 2, [c["rank"] for c in clients]
    mine = [u for u in round_two if u["client_id"] == left["credentials"]["client_id"]]
    assert [(u["status"], u["sha256"]) for u in mine] == [("accepted", left["pending"]["sha256"])]

    stored = (live.workdir / "adapters").rglob("*.safetensors")
    updates = [p for p in stored if job["id"] in str(p) and "updates" in p.parts]
    assert len(updates) == CLIENTS * ROUNDS
    for path in updates:
        assert all(key.endswith(".lora_A.weight") for key in load(path.read_bytes())), path
    kept = load(base64.b64decode(stored_state(states[0])["private"]))
    assert sorted(kept) == [
        "base_model.model.fc1.lora_B.weight", "base_model.model.fc2.lora_B.weight",
        "base_model.model.fc3.bias", "base_model.model.fc3.weight",
    ]  # fmt: skip
    assert all(abs(value).sum() > 0 for value in kept.values())  # trained, not the zero init
