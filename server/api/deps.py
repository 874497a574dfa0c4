"""Dependency aliases, named once: the runtime, operator and client authentication.

There is no session dependency on purpose. A sync generator dependency opens its transaction
on one request thread and commits it on another, after the route has returned to the event
loop and its response has been validated on a third: a transaction holding a row lock then
waits for a thread while the threads wait for its lock (issue 13). A route opens its own
``session_scope(runtime.sessions)`` (or, to read, ``read_scope``) instead, so the transaction
begins and ends inside the route's one thread hand-off (README, "Concurrency model").

Dependencies that do no I/O are ``async``: they run on the event loop and take no request
thread, so a saturated thread budget does not delay them (nor ``/readyz``, which needs one).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Annotated, TypeVar

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session
from starlette.requests import HTTPConnection

from server.db.models import Client, utcnow
from server.db.session import read_scope, session_scope
from server.errors import DomainError, Unauthorized
from server.notify import Waiters
from server.security import SESSION_COOKIE, bearer_token_of, matches_any, session_is_valid
from server.services import uploads
from server.services.enrolment import authenticate_client, mark_seen, seen_is_stale
from server.services.known_clients import ClientRef, KnownClient, KnownClients
from server.services.runtime import Runtime

T = TypeVar("T")


class ExactBearer(HTTPBearer):
    """``Authorization: Bearer <token>`` taken exactly as sent (``bearer_token_of``).

    FastAPI's ``HTTPBearer`` strips the token, so ``Bearer  <key>`` or ``Bearer <key><TAB>``
    authenticated as ``<key>``.
    """

    async def __call__(self, request: HTTPConnection) -> HTTPAuthorizationCredentials | None:
        token = bearer_token_of(request.headers.get("Authorization"))
        if token is None:
            return None
        return HTTPAuthorizationCredentials(scheme="Bearer", credentials=token)


bearer = ExactBearer(
    auto_error=False,
    scheme_name="HTTPBearer",  # the OpenAPI name it had as FastAPI's class
    description="Operator API key, job join token or client credential, as the route says.",
)


async def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_waiters(request: Request) -> Waiters:
    waiters: Waiters = request.app.state.waiters
    return waiters


WaitersDep = Annotated[Waiters, Depends(get_waiters)]


async def get_known_clients(request: Request) -> KnownClients:
    known: KnownClients = request.app.state.known_clients
    return known


KnownClientsDep = Annotated[KnownClients, Depends(get_known_clients)]
Bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


async def bearer_token(credentials: Bearer) -> str:
    if credentials is None or not credentials.credentials:
        raise Unauthorized("missing credentials: send 'Authorization: Bearer <token>'")
    return credentials.credentials


BearerToken = Annotated[str, Depends(bearer_token)]


async def require_operator(credentials: Bearer, runtime: RuntimeDep, request: Request) -> None:
    """The operator key as a Bearer token, or a dashboard session cookie issued for it."""
    keys = runtime.settings.operator_keys
    if credentials is None or not credentials.credentials:
        if session_is_valid(request.cookies.get(SESSION_COOKIE), keys):
            return
        raise Unauthorized("missing credentials: send 'Authorization: Bearer <token>'")
    if not matches_any(credentials.credentials, keys):
        raise Unauthorized("invalid operator key")


OperatorDep = Depends(require_operator)


def read_as_client(
    runtime: Runtime, known: KnownClients, token: str, read: Callable[[Session, ClientRef], T]
) -> tuple[KnownClient, T]:
    """Authenticate the client holding ``token`` and ``read`` what its request needs, in one
    short read-only transaction, then mark the client seen (``mark_seen_now``). Call on a
    request thread: the routes clients poll (their task, their adapter) read this way, one
    transaction per request instead of one for the credential and one for the answer.

    A credential this process has authenticated before is not read again
    (``services.known_clients``); one it reads is remembered.
    """
    client = known.get(token)
    try:
        with read_scope(runtime.sessions) as session:
            if client is None:
                client = known.remember(token, authenticate_client(session, token))
            result = read(session, client)
    finally:  # after the read's transaction ended; a refused request marks its client seen too
        if client is not None:
            mark_seen_now(runtime, client)
    return client, result


def get_current_client(token: BearerToken, runtime: RuntimeDep) -> Client:
    """The authenticated client's row, read in a short read-only transaction (begun and ended
    on this dependency's one request thread), then marked seen.

    Streaming routes use it too, so no database connection is held while a body streams.
    """
    with read_scope(runtime.sessions) as session:
        client = authenticate_client(session, token)
    mark_seen_now(runtime, client)
    return client


CurrentClient = Annotated[Client, Depends(get_current_client)]


def mark_seen_now(runtime: Runtime, client: ClientRef) -> None:
    """Refresh the client's last-seen time if it is older than ``FLAAS_LAST_SEEN_INTERVAL_S``:
    a write transaction at most once per interval, none otherwise."""
    now, interval = utcnow(), runtime.settings.last_seen_interval_s
    if seen_is_stale(client, now, interval):
        with session_scope(runtime.sessions) as session:
            mark_seen(session, client, now, interval)


def get_upload_target(
    round_id: uuid.UUID, token: BearerToken, runtime: RuntimeDep, known: KnownClientsDep
) -> uploads.UploadTarget:
    """The uploading client and where its update goes, read in one read-only transaction
    before a byte of the body is read (the credential only the first time this process sees
    it: ``known_clients``). It is marked seen by the transaction that accepts or refuses the
    body (one commit per upload), or here when the upload is refused at once.
    """
    client: ClientRef | None = known.get(token)
    try:
        with read_scope(runtime.sessions) as session:
            if client is None:
                client = known.remember(token, authenticate_client(session, token))
            return uploads.prepare_upload(session, client, round_id)
    except DomainError:
        if client is not None:
            mark_seen_now(runtime, client)
        raise


UploadTargetDep = Annotated[uploads.UploadTarget, Depends(get_upload_target)]
