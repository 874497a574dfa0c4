"""The one place where domain errors (and a busy database) become HTTP responses."""

from __future__ import annotations

import logging
import random

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc

from server import errors

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


def status_of(exc: errors.DomainError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 400


def retry_after() -> dict[str, str]:
    return {"Retry-After": str(random.randint(*RETRY_AFTER_S))}


async def _domain_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, errors.DomainError)
    status = status_of(exc)
    body: dict[str, object] = {"detail": exc.message}
    if isinstance(exc, errors.AdapterRejected) and exc.tensor is not None:
        body["tensor"] = exc.tensor
    headers = None
    if status == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    elif status == 503:
        headers = retry_after()
    return JSONResponse(body, status_code=status, headers=headers)


def busy_reason(exc: Exception) -> str | None:
    """Why the database turned the request away for now, or None if ``exc`` is a real error."""
    if isinstance(exc, sa_exc.TimeoutError):
        return "every database connection is in use (the connection pool timed out)"
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
        {"detail": f"the coordinator is busy: {reason}; retry after the Retry-After delay"},
        status_code=503,
        headers=retry_after(),
    )


def install(app: FastAPI) -> None:
    app.add_exception_handler(errors.DomainError, _domain_error)
    app.add_exception_handler(sa_exc.TimeoutError, _database_busy)
    app.add_exception_handler(sa_exc.OperationalError, _database_busy)
