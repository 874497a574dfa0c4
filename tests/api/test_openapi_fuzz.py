"""Schemathesis fuzzes every operation of the OpenAPI schema, and the schema must tell the truth.

Each operation is called with valid credentials for its audience (the operator key for
job routes, a real client credential of a running job for client routes), so the fuzzer
reaches the handlers instead of stopping at 401. Cases are drawn valid (positive) and
invalid (negative), and every answer must pass schemathesis' own checks: no 5xx, a status
the schema declares for the operation, a declared content type, a body that matches the
declared schema, and the headers declared for it (``Retry-After`` on a 503, for example).

Every finding is collected (not only the first), so one run lists all that is wrong.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.core.failures import Failure, FailureGroup

from tests.api.conftest import start_job
from tests.api.openapi_checks import CHECKS, failures_in
from tests.support import OPERATOR_KEY, coordinator, settings_for

EXAMPLES_PER_OPERATION = 40


def _token_for(path: str, method: str, operator_key: str, credential: str) -> str:
    enrol = path == "/api/v1/jobs/{job_id}/clients" and method == "POST"
    return operator_key if path.startswith("/api/v1/jobs") and not enrol else credential


def test_every_answer_conforms_to_the_schema(tmp_path: Path) -> None:
    settings_ = settings_for(f"sqlite:///{tmp_path / 'fuzz.db'}", tmp_path / "adapters")
    findings: dict[tuple[str, str, str], str] = {}
    cases: Counter[str] = Counter()
    with coordinator(settings_) as api:
        credential = start_job(api).clients[0]["credential"]
        schema = schemathesis.openapi.from_asgi("/openapi.json", api.app)
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 12
        for operation in operations:
            label = f"{operation.method.upper()} {operation.path}"
            headers = {
                "Authorization": "Bearer "
                + _token_for(operation.path, operation.method.upper(), OPERATOR_KEY, credential)
            }
            strategy = st.one_of(
                operation.as_strategy(GenerationMode.POSITIVE),
                operation.as_strategy(GenerationMode.NEGATIVE),
            )

            @given(case=strategy)
            @settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def conforms(case):  # type: ignore[no-untyped-def]
                cases[label] += 1  # noqa: B023 (run before the next loop)
                response = case.call(headers=headers)  # noqa: B023
                try:
                    case.validate_response(response, checks=CHECKS, headers=headers)  # noqa: B023
                except (Failure, FailureGroup) as exc:
                    for failure in failures_in(exc):
                        key = (label, type(failure).__name__, str(response.status_code))  # noqa: B023
                        findings.setdefault(key, f"{failure.title}: {response.text[:300]}")  # noqa: B023

            conforms()
    total = sum(cases.values())
    print(f"schemathesis: {len(operations)} operations, {total} cases, {len(findings)} findings")
    report = "\n".join(
        f"{op} [{kind}, {status}]: {text}" for (op, kind, status), text in sorted(findings.items())
    )
    assert not findings, f"{len(findings)} findings in {total} cases:\n{report}"
