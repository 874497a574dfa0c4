"""Job creation, listing, lookup and cancellation; health probes."""

from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient

from tests.support import job_spec, operator


def create(api: TestClient, **overrides):  # type: ignore[no-untyped-def]
    return api.post("/api/v1/jobs", json=job_spec(**overrides), headers=operator(api))


def test_create_returns_the_join_token_once(api: TestClient) -> None:
    created = create(api)
    assert created.status_code == 201
    body = created.json()
    assert body["join_token"].startswith("flj_")
    assert body["status"] == "enrolling" and body["spec"]["seed"] == 7
    shown = api.get(f"/api/v1/jobs/{body['id']}", headers=operator(api)).json()
    assert "join_token" not in shown
    assert shown["spec"] == body["spec"]


@pytest.mark.parametrize(
    ("overrides", "phrase"),
    [
        ({"strategy": "fedmagic"}, "rbla"),
        ({"strategy_options": {"uncovered": "sometimes"}}, "uncovered"),
        ({"rank": {"r_min": 8, "r_max": 4}}, "r_min"),
        ({"rounds": 0}, "rounds"),
        ({"modules": {}}, "modules"),
        ({"modules": {"fc1; drop table": [1, 2]}}, "invalid"),
        ({"surprise": 1}, "surprise"),
        ({"round": {"timeout_s": 10**9}}, "timeout_s"),
        ({"strategy": "fedit"}, "same rank"),
        ({"enrolment": {"min_clients": 5, "target_clients": 2}}, "target_clients"),
    ],
)
def test_bad_specs_are_422_with_a_reason(api: TestClient, overrides, phrase: str) -> None:
    response = create(api, **overrides)
    assert response.status_code == 422, response.text
    assert phrase in response.text


def test_list_filters_and_paginates(api: TestClient) -> None:
    ids = [create(api, name=f"job-{i}").json()["id"] for i in range(3)]
    api.post(f"/api/v1/jobs/{ids[0]}/cancel", headers=operator(api))
    page = api.get("/api/v1/jobs?limit=2", headers=operator(api)).json()
    assert page["total"] == 3 and len(page["items"]) == 2
    rest = api.get("/api/v1/jobs?limit=2&offset=2", headers=operator(api)).json()
    assert {j["id"] for j in page["items"] + rest["items"]} == set(ids)
    cancelled = api.get("/api/v1/jobs?status=cancelled", headers=operator(api)).json()
    assert [j["id"] for j in cancelled["items"]] == [ids[0]]
    assert api.get("/api/v1/jobs?status=sleeping", headers=operator(api)).status_code == 422
    assert api.get("/api/v1/jobs?limit=100000", headers=operator(api)).status_code == 422


def test_unknown_ids_are_404(api: TestClient) -> None:
    missing = uuid.uuid4()
    for path in (
        f"/api/v1/jobs/{missing}",
        f"/api/v1/jobs/{missing}/rounds",
        f"/api/v1/jobs/{missing}/clients",
        f"/api/v1/jobs/{missing}/adapter",
        f"/api/v1/jobs/{missing}/rounds/1",
    ):
        assert api.get(path, headers=operator(api)).status_code == 404, path
    assert api.post(f"/api/v1/jobs/{missing}/cancel", headers=operator(api)).status_code == 404
    assert api.get("/api/v1/jobs/not-a-uuid", headers=operator(api)).status_code == 422


def test_health_and_readiness(api: TestClient) -> None:
    assert api.get("/healthz").json() == {"status": "ok", "checks": {}}
    ready = api.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "storage": "ok"}


def test_openapi_schema_is_served(api: TestClient) -> None:
    schema = api.get("/openapi.json").json()
    assert "/api/v1/rounds/{round_id}/update" in schema["paths"]
    assert schema["info"]["title"] == "FLaaS coordinator"
