"""Fixtures for API tests: a coordinator on each database backend, and a started job."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.support import bearer, coordinator, job_spec, operator, settings_for, stats


@pytest.fixture
def api(database_url: str, tmp_path: Path) -> Iterator[TestClient]:
    with coordinator(settings_for(database_url, tmp_path / "adapters")) as client:
        yield client


@dataclass
class RunningJob:
    job: dict[str, Any]
    clients: list[dict[str, Any]]  # Enrolled responses (client_id, credential, rank)

    @property
    def id(self) -> str:
        return str(self.job["id"])

    def headers(self, index: int) -> dict[str, str]:
        return bearer(self.clients[index]["credential"])


def start_job(api: TestClient, **overrides: Any) -> RunningJob:
    """Create a job and enrol its target number of clients, which starts it."""
    spec = job_spec(**overrides)
    response = api.post("/api/v1/jobs", json=spec, headers=operator(api))
    assert response.status_code == 201, response.text
    job = response.json()
    target = spec["enrolment"]["target_clients"]
    clients = []
    for i in range(target):
        enrolled = api.post(
            f"/api/v1/jobs/{job['id']}/clients",
            json={
                "stats": stats(20 + 40 * i, entropy=0.1 + (0.3 * i) % 0.9),
                "name": f"device-{i}",
            },
            headers=bearer(job["join_token"]),
        )
        assert enrolled.status_code == 201, enrolled.text
        clients.append(enrolled.json())
    return RunningJob(job=job, clients=clients)


@pytest.fixture
def running(api: TestClient) -> RunningJob:
    return start_job(api)
