"""Operator monitoring routes: per-round metrics, a job summary, client activity, live events.

The dashboard reads only these and the other public routes, so an API user sees what it sees.
Each route opens and commits its own transaction on its one request thread
(``server.api.deps``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from server import errors
from server.api.deps import OperatorDep, RuntimeDep
from server.api.errors import BUSY, INVALID_INPUT, error_responses
from server.api.pagination import PAGE_OF_A_JOB, PageParams
from server.db.models import UpdateStatus
from server.db.session import read_scope
from server.schemas.api import Page, UpdateOut
from server.schemas.metrics import ClientActivity, JobSummary, RoundMetrics
from server.services import metrics
from server.services.runtime import Runtime

router = APIRouter(
    prefix="/api/v1/jobs",
    tags=["monitoring"],
    dependencies=[OperatorDep],
    responses=error_responses(errors.Unauthorized, BUSY),
)

EVENT_POLL_S = 1.0
EVENT_KEEPALIVE_S = 15.0
# A stream ends after this long; the browser's EventSource reconnects on its own.
EVENT_STREAM_S = 300.0


@router.get("/{job_id}/metrics", response_model=Page[RoundMetrics], responses=PAGE_OF_A_JOB)
def round_metrics(job_id: uuid.UUID, runtime: RuntimeDep, page: PageParams) -> Page[RoundMetrics]:
    """Per round: participation, stragglers, rejections, client metrics (mean, std, min, max),
    bytes up and down, phase durations and per-slice coverage. Ordered by round number."""
    with read_scope(runtime.sessions) as session:
        items, total = metrics.round_metrics(session, job_id, limit=page.limit, offset=page.offset)
    return Page(items=items, total=total, limit=page.limit, offset=page.offset)


@router.get(
    "/{job_id}/summary",
    response_model=JobSummary,
    responses=error_responses(errors.NotFound, INVALID_INPUT),
)
def job_summary(job_id: uuid.UUID, runtime: RuntimeDep) -> JobSummary:
    """Client counts by state and by rank, and AutoRank's CRITIC weights."""
    with read_scope(runtime.sessions) as session:
        return metrics.job_summary(session, job_id)


@router.get(
    "/{job_id}/clients/activity", response_model=Page[ClientActivity], responses=PAGE_OF_A_JOB
)
def client_activity(
    job_id: uuid.UUID, runtime: RuntimeDep, page: PageParams
) -> Page[ClientActivity]:
    """The job's clients (as ``/clients``) with their state: enrolled (never sampled),
    training (update expected in an open round), active (last update accepted) or
    straggling (missed the last round it was sampled in)."""
    with read_scope(runtime.sessions) as session:
        items, total = metrics.client_activity(
            session, job_id, limit=page.limit, offset=page.offset
        )
    return Page(items=items, total=total, limit=page.limit, offset=page.offset)


@router.get(
    "/{job_id}/rounds/{number}/updates", response_model=Page[UpdateOut], responses=PAGE_OF_A_JOB
)
def round_updates(
    job_id: uuid.UUID,
    number: Annotated[int, Path(ge=0, le=1_000_000)],
    runtime: RuntimeDep,
    page: PageParams,
    status: Annotated[UpdateStatus | None, Query()] = None,
) -> Page[UpdateOut]:
    """A page of one round's updates, optionally only accepted, pending or missed ones."""
    with read_scope(runtime.sessions) as session:
        items, total = metrics.round_updates(
            session, job_id, number, status=status, limit=page.limit, offset=page.offset
        )
    return Page(items=items, total=total, limit=page.limit, offset=page.offset)


def _snapshot(runtime: Runtime, job_id: uuid.UUID) -> tuple[str, bool]:
    """The event's JSON, and whether the job has ended."""
    with read_scope(runtime.sessions) as session:
        event = metrics.job_event(session, job_id)
    return event.model_dump_json(), event.ended


@router.get("/{job_id}/events", include_in_schema=False)
async def job_events(job_id: uuid.UUID, request: Request, runtime: RuntimeDep) -> StreamingResponse:
    """Server-sent events: a ``progress`` event (JSON of ``JobEvent``) now and whenever the
    job's status, round or accepted count changes. The stream ends after five minutes or
    once the job has ended; EventSource clients reconnect by themselves.

    Left out of the OpenAPI schema: it is a long-lived stream, not a request/response.
    """
    first, ended = await run_in_threadpool(_snapshot, runtime, job_id)  # 404 before streaming

    async def stream() -> AsyncIterator[str]:
        last, done, sent_at = first, ended, time.monotonic()
        ends = sent_at + EVENT_STREAM_S
        yield f"retry: 2000\nevent: progress\ndata: {first}\n\n"
        while not done and time.monotonic() < ends and not await request.is_disconnected():
            await asyncio.sleep(EVENT_POLL_S)
            now, done = await run_in_threadpool(_snapshot, runtime, job_id)
            if now != last:
                last, sent_at = now, time.monotonic()
                yield f"event: progress\ndata: {now}\n\n"
            elif time.monotonic() - sent_at > EVENT_KEEPALIVE_S:
                sent_at = time.monotonic()
                yield ": keepalive\n\n"

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
