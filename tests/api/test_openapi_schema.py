"""The OpenAPI schema tells the truth about error answers: which statuses each operation can
give, with the app's one error body (``ErrorOut``) and its headers.

The fuzzer (test_openapi_fuzz.py) reaches only the answers that random input can provoke
(401, 404, 422); the others (403, 409, 410, 413, a 422 naming a tensor, 503) are provoked
here on purpose and put through the same schemathesis checks.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import schemathesis
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from sqlalchemy import exc as sa_exc

from server.services import jobs as job_service
from tests.api.conftest import RunningJob, start_job
from tests.api.openapi_checks import CHECKS, failures_in
from tests.support import OPERATOR_KEY, adapter_tensors, job_spec, operator

ERROR_BODY = {"$ref": "#/components/schemas/ErrorOut"}
UNAUTHENTICATED = {"/healthz", "/readyz"}


def _schema(api: TestClient) -> dict[str, Any]:
    spec: dict[str, Any] = api.get("/openapi.json").json()
    return spec


def test_no_operation_keeps_fastapis_default_validation_schema(api: TestClient) -> None:
    schemas = _schema(api)["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and "ValidationError" not in schemas
    assert set(schemas["ErrorOut"]["properties"]) == {"detail", "tensor"}
    assert schemas["ErrorOut"]["required"] == ["detail"]


def test_every_operation_declares_its_error_answers(api: TestClient) -> None:
    operations = [
        (path, method, operation)
        for path, methods in _schema(api)["paths"].items()
        for method, operation in methods.items()
    ]
    assert len(operations) >= 20
    for path, method, operation in operations:
        where = f"{method.upper()} {path}"
        responses = operation["responses"]
        if path in UNAUTHENTICATED:
            continue
        assert responses["401"]["headers"]["WWW-Authenticate"]["required"], where
        assert responses["503"]["headers"]["Retry-After"]["required"], where
        takes_input = bool(operation.get("parameters") or operation.get("requestBody"))
        assert ("422" in responses) == takes_input, where
        for status, response in responses.items():
            if status.startswith("4") or status == "503":
                assert response["content"]["application/json"]["schema"] == ERROR_BODY, where
                assert response["description"], where


def test_the_upload_declares_every_refusal(api: TestClient) -> None:
    upload = _schema(api)["paths"]["/api/v1/rounds/{round_id}/update"]["put"]["responses"]
    assert set(upload) == {
        "200",
        "201",
        "401",
        "403",
        "404",
        "408",
        "409",
        "410",
        "413",
        "422",
        "503",
    }
    assert "`tensor`" in upload["422"]["description"]


@pytest.mark.parametrize(
    ("request_args", "names"),
    [
        (
            {"method": "GET", "url": "/api/v1/jobs?limit=0&offset=-1"},
            ["query.limit", "query.offset"],
        ),
        ({"method": "POST", "url": "/api/v1/jobs", "json": job_spec(rounds=0)}, ["body.rounds"]),
        (
            {"method": "POST", "url": "/api/v1/jobs", "content": b"{bad", "json_type": True},
            ["body: not valid JSON", "at character 1"],
        ),
        ({"method": "GET", "url": "/api/v1/jobs/not-a-uuid"}, ["path.job_id"]),
    ],
)
def test_a_validation_error_is_one_sentence_naming_the_field(
    api: TestClient, request_args: dict[str, Any], names: list[str]
) -> None:
    headers, request_args = operator(api), dict(request_args)
    if request_args.pop("json_type", False):
        headers["Content-Type"] = "application/json"
    response = api.request(**request_args, headers=headers)
    assert response.status_code == 422, response.text
    body = response.json()
    assert set(body) == {"detail"} and isinstance(body["detail"], str), body
    for name in names:
        assert name in body["detail"], body


def _conforming(
    schema: Any, method: str, path: str, status: int, token: str, **case: Any
) -> dict[str, Any]:
    """Call ``method path`` as schemathesis would, expect ``status``, and run its checks."""
    headers = {**case.pop("headers", {}), "Authorization": f"Bearer {token}"}
    call = schema[path][method].Case(headers=headers, **case)
    response = call.call()
    assert response.status_code == status, response.text
    # A 503 is the answer asked for here: every other check still applies to it.
    checks = [check for check in CHECKS if status != 503 or check is not not_a_server_error]
    try:
        call.validate_response(response, checks=checks)
    except (Failure, FailureGroup) as exc:
        found = "; ".join(f"{f.title}: {f.message[:200]}" for f in failures_in(exc)) or str(exc)
        pytest.fail(f"{method} {path} -> {status}: {found}")
    body: dict[str, Any] = response.json()
    return body


def _upload(
    job: RunningJob, round_id: str, body: bytes, client: int = 0, **headers: str
) -> dict[str, Any]:
    """The case of client ``client``'s upload of ``body``."""
    return {
        "path_parameters": {"round_id": round_id},
        "headers": {**job.headers(client), "Flaas-Num-Samples": "10", **headers},
        "body": body,
        "media_type": "application/octet-stream",
    }


def test_answers_the_fuzzer_cannot_reach_conform_to_the_schema(
    api: TestClient, running: RunningJob, monkeypatch: pytest.MonkeyPatch
) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", api.app)
    credential = running.clients[0]["credential"]
    task = api.get("/api/v1/clients/me/task", headers=running.headers(0)).json()
    round_id, rank = task["round_id"], task["rank"]
    upload = "/api/v1/rounds/{round_id}/update"

    other = start_job(api)
    foreign = api.get("/api/v1/clients/me/task", headers=other.headers(0)).json()["round_id"]
    path = {"path_parameters": {"round_id": foreign}}
    _conforming(schema, "GET", "/api/v1/rounds/{round_id}/adapter", 403, credential, **path)

    oversized = _upload(running, round_id, b"x", **{"Flaas-Metrics": "{" + " " * 8192 + "}"})
    _conforming(schema, "PUT", upload, 413, credential, **oversized)
    wrong = {**adapter_tensors(rank), "base_model.model.fc1.lora_A.weight": torch.zeros(rank, 3)}
    refused = _conforming(
        schema, "PUT", upload, 422, credential, **_upload(running, round_id, save(wrong))
    )
    assert refused["tensor"] == "base_model.model.fc1.lora_A.weight"
    accepted = save(adapter_tensors(rank))
    _conforming(schema, "PUT", upload, 201, credential, **_upload(running, round_id, accepted))
    _conforming(schema, "PUT", upload, 200, credential, **_upload(running, round_id, accepted))
    different = save(adapter_tensors(rank, seed=9))
    _conforming(schema, "PUT", upload, 409, credential, **_upload(running, round_id, different))

    cancel = {"path_parameters": {"job_id": running.id}}
    _conforming(schema, "POST", "/api/v1/jobs/{job_id}/cancel", 200, OPERATOR_KEY, **cancel)
    _conforming(schema, "POST", "/api/v1/jobs/{job_id}/cancel", 409, OPERATOR_KEY, **cancel)
    late = _upload(running, round_id, accepted, client=1)
    _conforming(schema, "PUT", upload, 410, running.clients[1]["credential"], **late)

    def busy(*_args: object, **_kwargs: object) -> None:
        raise sa_exc.TimeoutError("QueuePool limit reached")

    monkeypatch.setattr(job_service, "get_job", busy)
    job = {"path_parameters": {"job_id": str(uuid.uuid4())}}
    _conforming(schema, "GET", "/api/v1/jobs/{job_id}", 503, OPERATOR_KEY, **job)
