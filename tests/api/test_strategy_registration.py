"""A strategy registered in one place works through the whole coordinator.

The services ask the strategy class what they need (here ``equal_ranks``): registering it is
all it takes for job creation, enrolment and aggregation to follow it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

import pytest
from fastapi.testclient import TestClient

from server.aggregation import register_strategy, registry
from server.aggregation.rbla import RBLA
from tests.api.conftest import RunningJob
from tests.api.test_round_flow import train_round, wait_for
from tests.support import bearer, job_spec, operator, stats


class EqualRankRBLA(RBLA):
    """RBLA that insists on one rank for every client, as the FedIT baseline does."""

    name: ClassVar[str] = "test-equal-rank-rbla"
    equal_ranks: ClassVar[bool] = True


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    register_strategy(EqualRankRBLA)
    yield EqualRankRBLA.name


def test_a_registered_strategy_runs_a_job_at_the_ranks_it_asks_for(
    api: TestClient, registered: str
) -> None:
    unequal = api.post("/api/v1/jobs", json=job_spec(strategy=registered), headers=operator(api))
    assert unequal.status_code == 422, unequal.text
    assert "needs every client at the same rank" in unequal.text
    assert registered not in unequal.json()["detail"].partition("or choose")[2]

    fixed = {"policy": "fixed", "r_min": 2, "r_max": 8, "default_rank": 4}
    created = api.post(
        "/api/v1/jobs", json=job_spec(strategy=registered, rank=fixed), headers=operator(api)
    )
    assert created.status_code == 201, created.text
    job = created.json()
    assert job["strategy"] == registered
    enrol = f"/api/v1/jobs/{job['id']}/clients"
    small = api.post(
        enrol,
        json={"stats": stats(30), "name": "small", "max_rank": 2},
        headers=bearer(job["join_token"]),
    )
    assert small.status_code == 422 and "max_rank 2 is below it" in small.text
    clients = []
    for i in range(3):
        enrolled = api.post(
            enrol,
            json={"stats": stats(20 + 40 * i, entropy=0.1 + 0.3 * i), "name": f"device-{i}"},
            headers=bearer(job["join_token"]),
        )
        assert enrolled.status_code == 201, enrolled.text
        clients.append(enrolled.json())
    running = RunningJob(job=job, clients=clients)
    listed = api.get(f"/api/v1/jobs/{running.id}/clients", headers=operator(api)).json()
    assert [c["rank"] for c in listed["items"]] == [4, 4, 4]
    assert len(train_round(api, running, seed=5)) == 3
    detail = wait_for(
        lambda: (
            (r := api.get(f"/api/v1/jobs/{running.id}/rounds/1", headers=operator(api)).json())[
                "status"
            ]
            == "closed"
            and r
        )
    )
    assert detail["accepted"] == 3
    assert detail["global_adapter"]["n_updates"] == 3
    assert detail["aggregation"]["updates"] == 3
