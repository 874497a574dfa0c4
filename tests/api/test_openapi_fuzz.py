"""Schemathesis fuzzes every operation of the OpenAPI schema: no input may produce a 5xx.

Each operation is called with valid credentials for its audience (the operator key for
job routes, a real client credential of a running job for client routes), so the fuzzer
reaches the handlers instead of stopping at 401.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.api.conftest import start_job
from tests.support import OPERATOR_KEY, coordinator, settings_for

EXAMPLES_PER_OPERATION = 40


def _token_for(path: str, method: str, operator_key: str, credential: str) -> str:
    enrol = path == "/api/v1/jobs/{job_id}/clients" and method == "POST"
    return operator_key if path.startswith("/api/v1/jobs") and not enrol else credential


def test_no_input_causes_a_server_error(tmp_path: Path) -> None:
    settings_ = settings_for(f"sqlite:///{tmp_path / 'fuzz.db'}", tmp_path / "adapters")
    with coordinator(settings_) as api:
        credential = start_job(api).clients[0]["credential"]
        schema = schemathesis.openapi.from_asgi("/openapi.json", api.app)
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 12
        for operation in operations:
            headers = {
                "Authorization": "Bearer "
                + _token_for(operation.path, operation.method.upper(), OPERATOR_KEY, credential)
            }

            @given(case=operation.as_strategy())
            @settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def never_5xx(case):  # type: ignore[no-untyped-def]
                response = case.call(headers=headers)  # noqa: B023 (run before the next loop)
                assert response.status_code < 500, (
                    f"{case.method} {case.formatted_path} -> {response.status_code}: "
                    f"{response.text[:300]}"
                )

            try:
                never_5xx()
            except AssertionError as exc:
                pytest.fail(f"{operation.method.upper()} {operation.path}: {exc}")
