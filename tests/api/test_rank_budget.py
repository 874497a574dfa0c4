"""rank.reference and rank.budget through the API: the 422s at creation, and a spent budget."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from server.schemas.job_spec import JobSpec
from server.services.strategies import upload_bytes
from tests.api.conftest import start_job
from tests.support import bearer, job_spec, operator, stats

RANK = {"policy": "autorank", "r_min": 2, "r_max": 8}


def bytes_at(rank: int) -> int:
    return upload_bytes(JobSpec.model_validate(job_spec()), rank)


def create(api: TestClient, **rank: Any) -> Any:
    spec = job_spec(rank={**RANK, **rank})
    return api.post("/api/v1/jobs", json=spec, headers=operator(api))


def test_upload_bytes_follow_the_strategys_layout() -> None:
    # rbla uploads A (r x in) and B (out x r) of fc1 (8 -> 6) and fc2 (6 -> 4), and the head.
    assert bytes_at(1) == 4 * (8 + 6 + 6 + 4 + 3 * 4 + 3)
    assert bytes_at(5) - bytes_at(4) == 4 * (8 + 6 + 6 + 4)


@pytest.mark.parametrize(
    ("rank", "phrase"),
    [
        ({"budget": {"mean_rank": 1}}, "below the smallest rank a client can get (2)"),
        ({"budget": {"mean_rank": 9}}, "above the largest rank a client can get (8)"),
        ({"budget": {"mean_rank": 7}, "grid": [2, 3, 4]}, "largest rank a client can get (4)"),
        ({"budget": {}}, "exactly one of mean_rank or upload_bytes_per_round"),
        ({"budget": {"mean_rank": 4, "upload_bytes_per_round": 10**6}}, "exactly one"),
        ({"budget": {"mean_rank": 4}, "policy": "fixed"}, 'needs rank.policy \\"autorank\\"'),
        ({"budget": {"upload_bytes_per_round": 100}}, "below what a round uploads"),
        ({"budget": {"upload_bytes_per_round": 10**9}}, "can never be spent"),
        ({"reference": "median"}, "bounds"),
        ({"reference_samples": 1}, "reference_samples"),
    ],
)
def test_unmeetable_budgets_and_bad_references_are_422(
    api: TestClient, rank: dict[str, Any], phrase: str
) -> None:
    response = create(api, **rank)
    assert response.status_code == 422, response.text
    assert phrase in response.text


def test_the_bytes_limits_are_the_cohorts_extremes(api: TestClient) -> None:
    floor, ceiling = 3 * bytes_at(2), 3 * bytes_at(8)  # 3 clients, all sampled every round
    assert create(api, budget={"upload_bytes_per_round": floor - 1}).status_code == 422
    assert create(api, budget={"upload_bytes_per_round": floor}).status_code == 201
    assert create(api, budget={"upload_bytes_per_round": ceiling}).status_code == 201
    assert create(api, budget={"upload_bytes_per_round": ceiling + 1}).status_code == 422


def test_the_quality_benchmarks_budget_spec_is_accepted(api: TestClient) -> None:
    from bench.quality import Cell
    from bench.quality import job_spec as bench_spec

    spec = bench_spec(Cell("ranks", "digits", 0.5, "rbla-shrink", "autorank@6", 0))
    assert spec["rank"]["budget"] == {"mean_rank": 6.0}
    assert JobSpec.model_validate(spec).rank.budget is not None


@pytest.mark.parametrize(
    "budget",
    [{"mean_rank": 3.5}, {"upload_bytes_per_round": 0}],  # 0: filled in below
)
def test_a_budget_is_spent_and_recorded(api: TestClient, budget: dict[str, Any]) -> None:
    if "upload_bytes_per_round" in budget:
        budget = {"upload_bytes_per_round": 3 * bytes_at(2) + 2 * (bytes_at(3) - bytes_at(2))}
    job = start_job(api, rank={**RANK, "budget": budget})
    shown = api.get(f"/api/v1/jobs/{job.id}", headers=operator(api)).json()
    record = shown["autorank"]["result"]
    assert record["reference"] == "bounds" and record["budget"]["status"] == "met"
    clients = api.get(f"/api/v1/jobs/{job.id}/clients", headers=operator(api)).json()["items"]
    ranks = [c["rank"] for c in clients]
    if "mean_rank" in budget:
        assert sum(ranks) / len(ranks) <= 3.5
    else:
        assert sum(bytes_at(r) for r in ranks) <= budget["upload_bytes_per_round"]
    assert record["budget"]["spent"] <= record["budget"]["limit"]
    summary = api.get(f"/api/v1/jobs/{job.id}/summary", headers=operator(api)).json()
    assert summary["rank_budget"] == record["budget"]


def test_cohort_reference_keeps_the_old_spread_and_bounds_does_not(api: TestClient) -> None:
    alike = [stats(383, 0.995), stats(384, 0.998), stats(383, 0.996)]
    seen = {}
    for reference in ("cohort", "bounds"):
        created = create(api, reference=reference).json()
        for i, s in enumerate(alike):
            enrolled = api.post(
                f"/api/v1/jobs/{created['id']}/clients",
                json={"stats": {**s, "loss_entropy": 0.6 + 0.01 * i}, "name": f"d{i}"},
                headers=bearer(created["join_token"]),
            )
            assert enrolled.status_code == 201, enrolled.text
        listed = api.get(f"/api/v1/jobs/{created['id']}/clients", headers=operator(api)).json()
        seen[reference] = sorted(c["rank"] for c in listed["items"])
    assert seen["cohort"][0] == 2 and seen["cohort"][-1] == 8
    assert seen["bounds"][-1] - seen["bounds"][0] <= 1
