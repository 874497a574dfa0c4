"""``GET /api/v1/jobs/{id}/join``: what the /join page tells a person, for the join token only."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import start_job
from tests.support import HEAD, bearer, job_spec, operator

PUBLIC_FACTS = {
    "job_id",
    "name",
    "status",
    "strategy",
    "model",
    "total_rounds",
    "current_round",
    "r_min",
    "r_max",
    "shared_parts",
    "private_parts",
    "extra_tensors",
}


def create(api: TestClient, **overrides: object) -> dict[str, object]:
    response = api.post("/api/v1/jobs", json=job_spec(**overrides), headers=operator(api))
    assert response.status_code == 201, response.text
    job: dict[str, object] = response.json()
    return job


@pytest.mark.parametrize(
    ("strategy", "shared", "private"),
    [
        ("rbla", ["extra", "lora_A", "lora_B"], []),
        ("fedsa", ["lora_A"], ["extra", "lora_B"]),
        ("fedsa-shared-head", ["extra", "lora_A"], ["lora_B"]),
    ],
)
def test_a_join_token_holder_is_told_the_job_and_what_leaves_the_device(
    api: TestClient, strategy: str, shared: list[str], private: list[str]
) -> None:
    job = create(api, name="digits-phones", strategy=strategy, rounds=5)
    response = api.get(f"/api/v1/jobs/{job['id']}/join", headers=bearer(str(job["join_token"])))
    assert response.status_code == 200, response.text
    facts = response.json()
    assert set(facts) == PUBLIC_FACTS  # no spec, no AutoRank matrix, no other clients
    assert facts["job_id"] == job["id"] and facts["name"] == "digits-phones"
    assert facts["status"] == "enrolling" and facts["strategy"] == strategy
    assert (facts["total_rounds"], facts["current_round"]) == (5, 0)
    assert (facts["r_min"], facts["r_max"]) == (2, 8)
    assert facts["shared_parts"] == shared and facts["private_parts"] == private
    assert facts["extra_tensors"] == sorted(HEAD)
    assert facts["model"] is None  # the tiny spec writes its modules by hand


def test_the_facts_follow_the_job(api: TestClient) -> None:
    running = start_job(api)
    facts = api.get(f"/api/v1/jobs/{running.id}/join", headers=bearer(running.job["join_token"]))
    assert facts.json()["status"] == "running" and facts.json()["current_round"] == 1


def test_only_the_join_token_opens_them(api: TestClient) -> None:
    running = start_job(api)
    path = f"/api/v1/jobs/{running.id}/join"
    other = create(api, name="other")
    for token in ("flj_nope", str(other["join_token"]), running.clients[0]["credential"]):
        refused = api.get(path, headers=bearer(token))
        assert refused.status_code == 401, token
        assert refused.json()["detail"] == "invalid join token for this job"
    assert api.get(path).status_code == 401
    unknown = api.get(
        "/api/v1/jobs/00000000-0000-4000-8000-000000000000/join",
        headers=bearer(running.job["join_token"]),
    )
    assert unknown.status_code == 401
