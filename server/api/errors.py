"""The one place where domain errors become HTTP responses."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from server import errors

STATUS: dict[type[errors.DomainError], int] = {
    errors.InvalidRequest: 422,
    errors.AdapterRejected: 422,
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.Gone: 410,
    errors.Forbidden: 403,
    errors.Unauthorized: 401,
    errors.PayloadTooLarge: 413,
    errors.ServiceUnavailable: 503,
}


def status_of(exc: errors.DomainError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 400


async def _domain_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, errors.DomainError)
    status = status_of(exc)
    body: dict[str, object] = {"detail": exc.message}
    if isinstance(exc, errors.AdapterRejected) and exc.tensor is not None:
        body["tensor"] = exc.tensor
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    app.add_exception_handler(errors.DomainError, _domain_error)
