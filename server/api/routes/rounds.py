"""Round routes for clients: download the starting adapter, upload the trained update.

An upload costs one commit: the client and its target are read before the body (a read-only
transaction, ``UploadTargetDep``), and the transaction that accepts (or refuses) the body also
marks the client seen.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
import uuid
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from server import errors
from server.api.blobs import blob_response
from server.api.deps import (
    BearerToken,
    KnownClientsDep,
    RuntimeDep,
    UploadTargetDep,
    mark_seen_now,
    read_as_client,
)
from server.api.errors import BUSY, INVALID_INPUT, error_responses
from server.db.models import ClientUpdate
from server.db.session import read_scope, session_scope
from server.errors import AdapterRejected, DomainError, PayloadTooLarge, RequestTimeout
from server.observability.prometheus import UPLOADS_REJECTED, rejection_reason
from server.schemas.api import TrainAssignment, TrainTask, UpdateOut
from server.services import adapters, uploads
from server.services.adapter_format import validate_adapter
from server.services.known_clients import ClientRef, mark_accepted
from server.services.runtime import Runtime

log = logging.getLogger(__name__)
router = APIRouter(
    prefix="/api/v1/rounds", tags=["rounds"], responses=error_responses(errors.Unauthorized, BUSY)
)

CHUNK_WRITE_BYTES = 1 << 20


def train_task(assignment: TrainAssignment, adapter: bytes | None = None) -> TrainTask:
    """The train answer to a client: its assignment, with this router's paths to download the
    round's adapter and upload the update, and the ``adapter`` itself when given."""
    round_id = str(assignment.round_id)
    return TrainTask(
        **dict(assignment),
        adapter_url=str(router.url_path_for("download_adapter", round_id=round_id)),
        upload_url=str(router.url_path_for("upload_update", round_id=round_id)),
        adapter=None if adapter is None else base64.b64encode(adapter).decode("ascii"),
    )


@router.get(
    "/{round_id}/adapter",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"application/octet-stream": {}}},
        **error_responses(
            errors.Forbidden,
            errors.NotFound,
            errors.Conflict,
            INVALID_INPUT,
            notes={409: "Round 0 trains nobody, or this client has no rank yet"},
        ),
    },
)
def download_adapter(
    round_id: uuid.UUID, token: BearerToken, runtime: RuntimeDep, known: KnownClientsDep
) -> Response:
    """The global adapter this round starts from, cut to the client's rank (safetensors)."""

    def key_of(session: Session, client: ClientRef) -> str:
        return adapters.client_adapter_key(session, runtime, client, round_id)

    _, key = read_as_client(runtime, known, token, key_of)
    return blob_response(runtime.store, key)


@router.put(
    "/{round_id}/update",
    status_code=201,
    response_model=UpdateOut,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    },
    responses={
        200: {"model": UpdateOut, "description": "Identical retry of an accepted update"},
        **error_responses(
            errors.Forbidden,
            errors.NotFound,
            errors.Conflict,
            errors.Gone,
            errors.PayloadTooLarge,
            errors.RequestTimeout,
            errors.InvalidRequest,
            errors.AdapterRejected,
            INVALID_INPUT,
            notes={
                409: "This client is not sampled in the round, or already uploaded a "
                "different update",
                410: "The round no longer accepts updates (aggregating, closed, failed)",
                413: "The body is over FLAAS_MAX_UPLOAD_BYTES, or its safetensors header "
                "or Flaas-Metrics over their limits",
                422: "A bad Flaas-Num-Samples or Flaas-Metrics header, or an adapter that "
                "breaks the upload contract (docs/upload-contract.md; `tensor` names the "
                "tensor at fault); or an invalid round id",
            },
        ),
    },
)
async def upload_update(
    round_id: uuid.UUID,
    request: Request,
    target: UploadTargetDep,
    runtime: RuntimeDep,
    flaas_num_samples: Annotated[str | None, Header()] = None,
    flaas_metrics: Annotated[str | None, Header()] = None,
    flaas_content_sha256: Annotated[str | None, Header()] = None,
) -> Response:
    """Upload this client's update for the round: raw safetensors, streamed to storage.

    See docs/upload-contract.md. 201 when accepted, 200 for an identical retry.
    """
    try:
        return await _upload(
            request, target, runtime, flaas_num_samples, flaas_metrics, flaas_content_sha256
        )
    except DomainError as exc:
        UPLOADS_REJECTED.labels(rejection_reason(exc)).inc()
        # Refused without a transaction of its own (a bad header, a body over the limit) or
        # in one that rolled back (409, 410): the client was seen all the same. Best effort:
        # the refusal is the answer, not a database error while marking.
        with contextlib.suppress(SQLAlchemyError):
            await run_in_threadpool(mark_seen_now, runtime, target.client)
        raise
    except ClientDisconnect:
        # A device losing its network mid-upload is routine: one line, no traceback. Nobody
        # reads the answer (499: nginx's "client closed request", for the access log).
        UPLOADS_REJECTED.labels("disconnected").inc()
        log.info(
            "upload for round %d of job %s: the client disconnected before the end of the body",
            target.round_number,
            target.job_id,
            extra={
                "job_id": str(target.job_id),
                "round_id": str(target.round_id),
                "round": target.round_number,
                "client_id": str(target.client_id),
            },
        )
        return Response(status_code=499)


async def _upload(
    request: Request,
    target: uploads.UploadTarget,
    runtime: Runtime,
    flaas_num_samples: str | None,
    flaas_metrics: str | None,
    flaas_content_sha256: str | None,
) -> Response:
    started = time.perf_counter()
    settings = runtime.settings
    declared = uploads.declare(
        target,
        settings,
        num_samples=flaas_num_samples,
        metrics=flaas_metrics,
        content_length=request.headers.get("content-length"),
        content_sha256=flaas_content_sha256,
    )
    if declared.identical_retry:
        return await run_in_threadpool(_retry_answer, runtime, target)
    with runtime.store.staging_file() as staged:
        body = uploads.UploadBody(settings)
        await _receive(request, staged, body, settings.upload_idle_timeout_s)
        received = uploads.ReceivedUpdate(
            staged=staged,
            sha256=body.sha256,
            size_bytes=body.size,
            n_samples=declared.n_samples,
            metrics=declared.metrics,
            upload_seconds=time.perf_counter() - started,
        )
        # Checked and accepted in one thread hand-off (each costs a turn of the event loop
        # and, under load, a wait for a request thread).
        update, created = await run_in_threadpool(_check_and_accept, runtime, target, received)
    answer = UpdateOut.model_validate(update).model_dump(mode="json")
    return JSONResponse(answer, status_code=201 if created else 200)


async def _receive(
    request: Request, path: Path, body: uploads.UploadBody, idle_timeout_s: float
) -> None:
    """Stream the body to ``path`` through ``body`` (which refuses it past the size cap, at
    once: the answer closes the connection, ``observability.http``), refusing it when no part
    of it arrives for ``idle_timeout_s``."""
    buffer = bytearray()
    loop = asyncio.get_running_loop()
    with path.open("wb") as sink:
        # One deadline, moved on by each chunk (no task per chunk, as wait_for makes).
        idle = asyncio.timeout(idle_timeout_s)
        try:
            async with idle:
                async for chunk in request.stream():
                    idle.reschedule(None)  # writing to disk is not the client idling
                    body.take(chunk)
                    buffer += chunk
                    if len(buffer) >= CHUNK_WRITE_BYTES:
                        await run_in_threadpool(sink.write, bytes(buffer))
                        buffer.clear()
                    idle.reschedule(loop.time() + idle_timeout_s)
        except TimeoutError:
            if not idle.expired():
                raise
            raise RequestTimeout(
                f"no part of the update arrived for {idle_timeout_s:g} s; send it again"
            ) from None
        if buffer:
            sink.write(buffer)


def _retry_answer(runtime: Runtime, target: uploads.UploadTarget) -> JSONResponse:
    with read_scope(runtime.sessions) as session:
        update = uploads.get_update(session, target.update_id)
        answer = JSONResponse(
            UpdateOut.model_validate(update).model_dump(mode="json"), status_code=200
        )
    mark_seen_now(runtime, target.client)
    return answer


def _reject(runtime: Runtime, target: uploads.UploadTarget, reason: str) -> None:
    with session_scope(runtime.sessions) as session:
        uploads.record_rejection(session, runtime, target, reason)


def _check_and_accept(
    runtime: Runtime, target: uploads.UploadTarget, received: uploads.ReceivedUpdate
) -> tuple[ClientUpdate, bool]:
    """The received body against the upload contract (a refusal is recorded, then raised),
    then accepted: the update, and whether it is new."""
    try:
        validate_adapter(
            received.staged, target.expected, max_header_bytes=runtime.settings.max_header_bytes
        )
    except (AdapterRejected, PayloadTooLarge) as exc:
        _reject(runtime, target, exc.message)
        raise
    with session_scope(runtime.sessions) as session:
        update, created = uploads.accept_update(session, runtime, target, received)
    mark_accepted(target.client, target.round_id)
    if created:
        uploads.aggregate_if_complete(runtime, target)
    return update, created
