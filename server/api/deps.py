"""Dependency aliases, named once: sessions, the runtime, operator and client authentication."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from server.dashboard.auth import COOKIE_NAME as SESSION_COOKIE
from server.dashboard.auth import session_is_valid
from server.db.models import Client
from server.db.session import session_scope
from server.errors import Unauthorized
from server.security import matches_any
from server.services.enrolment import authenticate_client
from server.services.runtime import Runtime

bearer = HTTPBearer(
    auto_error=False,
    description="Operator API key, job join token or client credential, as the route says.",
)


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_session(runtime: RuntimeDep) -> Iterator[Session]:
    """A transaction per request, committed before the response is sent."""
    with session_scope(runtime.sessions) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session, scope="function")]
Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def bearer_token(credentials: Bearer) -> str:
    if credentials is None or not credentials.credentials:
        raise Unauthorized("missing credentials: send 'Authorization: Bearer <token>'")
    return credentials.credentials


BearerToken = Annotated[str, Depends(bearer_token)]


def require_operator(credentials: Bearer, runtime: RuntimeDep, request: Request) -> None:
    """The operator key as a Bearer token, or a dashboard session cookie issued for it."""
    keys = runtime.settings.operator_keys
    if credentials is None or not credentials.credentials:
        if session_is_valid(request.cookies.get(SESSION_COOKIE), keys):
            return
        raise Unauthorized("missing credentials: send 'Authorization: Bearer <token>'")
    if not matches_any(credentials.credentials, keys):
        raise Unauthorized("invalid operator key")


OperatorDep = Depends(require_operator)


def get_current_client(token: BearerToken, runtime: RuntimeDep) -> Client:
    """The authenticated client, loaded in a short transaction of its own.

    Streaming routes use it too, so no database connection is held while a body uploads.
    """
    with session_scope(runtime.sessions) as session:
        return authenticate_client(session, token)


CurrentClient = Annotated[Client, Depends(get_current_client)]
