"""401 for missing or wrong credentials, 403 for another job's resources."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.api.conftest import RunningJob
from tests.support import bearer, job_spec, operator, stats


def test_operator_routes_need_the_operator_key(api: TestClient, running: RunningJob) -> None:
    assert api.get("/api/v1/jobs").status_code == 401
    assert api.get("/api/v1/jobs", headers=bearer("wrong")).status_code == 401
    assert api.get("/api/v1/jobs", headers=running.headers(0)).status_code == 401
    response = api.post("/api/v1/jobs", json=job_spec())
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


def test_join_token_is_per_job(api: TestClient, running: RunningJob) -> None:
    other = api.post("/api/v1/jobs", json=job_spec(), headers=operator(api)).json()
    response = api.post(
        f"/api/v1/jobs/{other['id']}/clients",
        json={"stats": stats(10)},
        headers=bearer(running.job["join_token"]),
    )
    assert response.status_code == 401
    assert (
        api.post(f"/api/v1/jobs/{other['id']}/clients", json={"stats": stats(10)}).status_code
        == 401
    )


def test_client_routes_need_a_client_credential(api: TestClient, running: RunningJob) -> None:
    assert api.get("/api/v1/clients/me/task").status_code == 401
    assert api.get("/api/v1/clients/me/task", headers=operator(api)).status_code == 401
    assert api.get("/api/v1/clients/me/task", headers=running.headers(1)).status_code == 200


def test_enrolling_into_a_finished_job_is_410(api: TestClient, running: RunningJob) -> None:
    api.post(f"/api/v1/jobs/{running.id}/cancel", headers=operator(api))
    response = api.post(
        f"/api/v1/jobs/{running.id}/clients",
        json={"stats": stats(10)},
        headers=bearer(running.job["join_token"]),
    )
    assert response.status_code == 410
