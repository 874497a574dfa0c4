"""The one place where domain errors (and a busy database, and invalid input) become HTTP
responses, and where the OpenAPI schema learns which of them each route can answer.

Every error answer has one body, ``ErrorOut``: the handlers here build it, and
``error_responses`` declares it, so the schema and the answers cannot drift apart.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc

from server import errors
from server.schemas.api import ErrorOut

log = logging.getLogger(__name__)

STATUS: dict[type[errors.DomainError], int] = {
    errors.InvalidRequest: 422,
    errors.AdapterRejected: 422,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.Gone: 410,
    errors.Forbidden: 403,
    errors.Unauthorized: 401,
    errors.PayloadTooLarge: 413,
    errors.RequestTimeout: 408,
    errors.ServiceUnavailable: 503,
}

# PostgreSQL refusals that mean "busy, try again", not "wrong": nothing was changed (the
# transaction was rolled back), and the same request succeeds once the contention passes.
BUSY_SQLSTATES = {
    "40001": "a concurrent transaction changed the same rows",  # serialization_failure
    "40P01": "a concurrent transaction locked the same rows",  # deadlock_detected
    "55P03": "a row lock was not granted in time",  # lock_not_available (lock_timeout)
    "53300": "the database has no free connection slot",  # too_many_connections
}
# SQLite's equivalent of a lock time-out (its busy timeout passed).
SQLITE_BUSY = ("database is locked", "database table is locked")
# Seconds a client is told to wait after a 503, drawn per answer: a cohort refused together
# comes back spread out instead of as the same stampede.
RETRY_AFTER_S = (1, 4)


# At most this many field errors are spelled out in a 422's detail (the rest are counted).
MAX_FIELD_ERRORS = 5


@dataclass(frozen=True)
class Answer:
    """An error answer that no domain error stands for (a route declares it as one)."""

    status: int
    description: str


INVALID_INPUT = Answer(
    422, "A path, query, header or body field is missing or invalid (the detail names it)."
)
BODY_NOT_JSON = Answer(400, "The body could not be read as JSON (it is not UTF-8).")
BUSY = Answer(
    503,
    "The coordinator is busy (every database connection in use, a row lock not granted in "
    "time) or its storage is unreachable: nothing was changed; retry after Retry-After.",
)
# Headers every answer of these statuses carries (the handlers below set them).
HEADERS: dict[int, dict[str, dict[str, Any]]] = {
    401: {
        "WWW-Authenticate": {
            "description": "Always `Bearer`",
            "required": True,
            "schema": {"type": "string"},
        }
    },
    503: {
        "Retry-After": {
            "description": f"Seconds to wait before retrying ({RETRY_AFTER_S[0]} to "
            f"{RETRY_AFTER_S[1]}, drawn per answer so refused clients come back spread out)",
            "required": True,
            "schema": {"type": "integer", "minimum": 0},
        }
    },
}


def status_of_class(cls: type[errors.DomainError]) -> int:
    for base in cls.__mro__:
        if base in STATUS:
            return STATUS[base]
    return 400


def status_of(exc: errors.DomainError) -> int:
    return status_of_class(type(exc))


def _described(answer: type[errors.DomainError] | Answer) -> tuple[int, str]:
    if isinstance(answer, Answer):
        return answer.status, answer.description
    return status_of_class(answer), (answer.__doc__ or answer.__name__).strip().splitlines()[0]


def error_responses(
    *answers: type[errors.DomainError] | Answer, notes: dict[int, str] | None = None
) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of the error answers a route can give: one per status, with
    ``ErrorOut`` as its body, the descriptions of the errors that map to it (or ``notes``'
    wording for that route), and its headers."""
    described: dict[int, list[str]] = {}
    for answer in answers:
        status, description = _described(answer)
        if description not in described.setdefault(status, []):
            described[status].append(description)
    notes = notes or {}
    declared: dict[int | str, dict[str, Any]] = {}
    for status in sorted(described):
        declared[status] = {
            "model": ErrorOut,
            "description": notes.get(status, " ".join(described[status])),
        }
        if status in HEADERS:
            declared[status]["headers"] = HEADERS[status]
    return declared


def retry_after() -> dict[str, str]:
    return {"Retry-After": str(random.randint(*RETRY_AFTER_S))}


def error_body(detail: str, tensor: str | None = None) -> dict[str, Any]:
    return ErrorOut(detail=detail, tensor=tensor).model_dump(exclude_none=True)


async def _domain_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, errors.DomainError)
    status = status_of(exc)
    tensor = exc.tensor if isinstance(exc, errors.AdapterRejected) else None
    headers = None
    if status == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    elif status == 503:
        headers = retry_after()
    return JSONResponse(error_body(exc.message, tensor), status_code=status, headers=headers)


def _field_error(error: dict[str, Any]) -> str:
    loc: Sequence[str | int] = error.get("loc", ())
    if error.get("type") == "json_invalid":
        position = f" at character {loc[1]}" if len(loc) > 1 else ""
        reason = (error.get("ctx") or {}).get("error", "JSON decode error")
        return f"body: not valid JSON ({reason}{position})"
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    return f"{'.'.join(str(part) for part in loc) or 'request'}: {message}"


def validation_detail(exc: RequestValidationError) -> str:
    """One sentence naming each invalid field (``query.limit: ...; body.rounds: ...``)."""
    found = [_field_error(error) for error in exc.errors()]
    detail = "; ".join(found[:MAX_FIELD_ERRORS])
    if len(found) > MAX_FIELD_ERRORS:
        detail += f"; and {len(found) - MAX_FIELD_ERRORS} more"
    return detail or "the request is invalid"


async def _invalid_input(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse(error_body(validation_detail(exc)), status_code=INVALID_INPUT.status)


def busy_reason(exc: Exception) -> str | None:
    """Why the database turned the request away for now, or None if ``exc`` is a real error."""
    if isinstance(exc, sa_exc.TimeoutError):
        return "every database connection is in use (the connection pool timed out)"
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        # The pool is invalidated with it: the retry gets a new connection.
        return "the database connection was lost (the database restarted or dropped it)"
    if isinstance(exc, sa_exc.OperationalError):
        sqlstate = getattr(exc.orig, "sqlstate", None)
        if sqlstate in BUSY_SQLSTATES:
            return BUSY_SQLSTATES[sqlstate]
        if str(exc.orig).startswith(SQLITE_BUSY):
            return "the database is locked by other writers"
    return None


async def _database_busy(request: Request, exc: Exception) -> JSONResponse:
    reason = busy_reason(exc)
    if reason is None:
        raise exc  # any other database error is a bug: a 500, with its traceback logged
    log.warning("503 for %s %s: %s", request.method, request.url.path, reason)
    return JSONResponse(
        error_body(f"the coordinator is busy: {reason}; retry after the Retry-After delay"),
        status_code=BUSY.status,
        headers=retry_after(),
    )


def install(app: FastAPI) -> None:
    app.add_exception_handler(errors.DomainError, _domain_error)
    app.add_exception_handler(RequestValidationError, _invalid_input)
    app.add_exception_handler(sa_exc.TimeoutError, _database_busy)
    app.add_exception_handler(sa_exc.DBAPIError, _database_busy)
