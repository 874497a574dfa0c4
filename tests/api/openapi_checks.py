"""Schemathesis' own checks that every answer of the API must pass against its OpenAPI schema."""

from __future__ import annotations

from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.failures import Failure, FailureGroup

# No 5xx, a status the operation declares, a declared content type, a body that matches the
# declared schema, and the headers declared for that status (Retry-After on a 503...).
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


def failures_in(exc: BaseException) -> list[Failure]:
    """The individual findings in what ``Case.validate_response`` raised."""
    if isinstance(exc, FailureGroup):
        return [f for inner in exc.exceptions for f in failures_in(inner)]
    return [exc] if isinstance(exc, Failure) else []
