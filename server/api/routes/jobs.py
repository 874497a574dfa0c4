"""Operator routes: jobs, their rounds, clients and global adapters.

Each route opens its own transaction and builds its answer inside it, so the transaction
begins and commits on the route's one request thread (``server.api.deps``).
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from fastapi.responses import Response

from server import errors
from server.api.blobs import blob_response
from server.api.deps import OperatorDep, RuntimeDep
from server.api.errors import BODY_NOT_JSON, BUSY, INVALID_INPUT, error_responses
from server.api.pagination import PAGE_OF_A_JOB, PageParams
from server.db.models import Job, JobStatus
from server.db.session import read_scope, session_scope
from server.schemas.api import (
    ClientOut,
    JobCreated,
    JobOut,
    Page,
    RoundDetail,
    RoundOut,
)
from server.schemas.job_spec import JobSpec
from server.services import adapters, export, jobs, queries

router = APIRouter(
    prefix="/api/v1/jobs",
    tags=["jobs"],
    dependencies=[OperatorDep],
    responses=error_responses(errors.Unauthorized, BUSY),
)


def _job_out(job: Job, clients: int) -> JobOut:
    out = JobOut.model_validate(job)
    out.enrolled_clients = clients
    return out


@router.post(
    "",
    status_code=201,
    response_model=JobCreated,
    responses=error_responses(BODY_NOT_JSON, errors.InvalidRequest, INVALID_INPUT),
)
def create_job(spec: JobSpec, runtime: RuntimeDep) -> JobCreated:
    """Create a job; the response carries its join token, shown only once."""
    with session_scope(runtime.sessions) as session:
        job, token = jobs.create_job(
            session, spec, max_clients=runtime.settings.max_clients_per_job
        )
        return JobCreated(**_job_out(job, 0).model_dump(), join_token=token)


@router.get(
    "", response_model=Page[JobOut], responses=error_responses(errors.InvalidRequest, INVALID_INPUT)
)
def list_jobs(
    runtime: RuntimeDep, page: PageParams, status: Annotated[JobStatus | None, Query()] = None
) -> Page[JobOut]:
    """List jobs, newest first, optionally filtered by status."""
    with read_scope(runtime.sessions) as session:
        items, total = jobs.list_jobs(session, status=status, limit=page.limit, offset=page.offset)
        counts = jobs.count_clients(session, [j.id for j in items])
        return Page(
            items=[_job_out(j, counts.get(j.id, 0)) for j in items],
            total=total,
            limit=page.limit,
            offset=page.offset,
        )


@router.get(
    "/{job_id}", response_model=JobOut, responses=error_responses(errors.NotFound, INVALID_INPUT)
)
def get_job(job_id: uuid.UUID, runtime: RuntimeDep) -> JobOut:
    """One job with its spec, progress and AutoRank evidence."""
    with read_scope(runtime.sessions) as session:
        job = jobs.get_job(session, job_id)
        return _job_out(job, jobs.count_clients(session, [job.id]).get(job.id, 0))


@router.post(
    "/{job_id}/cancel",
    response_model=JobOut,
    responses=error_responses(
        errors.NotFound, errors.Conflict, INVALID_INPUT, notes={409: "The job has already ended"}
    ),
)
def cancel_job(job_id: uuid.UUID, runtime: RuntimeDep) -> JobOut:
    """Cancel an enrolling or running job; its open round stops accepting updates."""
    with session_scope(runtime.sessions) as session:
        job = jobs.cancel_job(session, runtime, job_id)
        return _job_out(job, jobs.count_clients(session, [job.id]).get(job.id, 0))


@router.get("/{job_id}/rounds", response_model=Page[RoundOut], responses=PAGE_OF_A_JOB)
def list_rounds(job_id: uuid.UUID, runtime: RuntimeDep, page: PageParams) -> Page[RoundOut]:
    """The job's rounds in order (round 0 holds the initial adapter)."""
    with read_scope(runtime.sessions) as session:
        items, total = queries.list_rounds(session, job_id, limit=page.limit, offset=page.offset)
    return Page(items=items, total=total, limit=page.limit, offset=page.offset)


@router.get(
    "/{job_id}/rounds/{number}",
    response_model=RoundDetail,
    responses=error_responses(errors.NotFound, INVALID_INPUT),
)
def get_round(
    job_id: uuid.UUID, number: Annotated[int, Path(ge=0, le=1_000_000)], runtime: RuntimeDep
) -> RoundDetail:
    """One round with every sampled client's update (accepted, pending or missed)."""
    with read_scope(runtime.sessions) as session:
        return queries.round_detail(session, job_id, number)


@router.get("/{job_id}/clients", response_model=Page[ClientOut], responses=PAGE_OF_A_JOB)
def list_clients(job_id: uuid.UUID, runtime: RuntimeDep, page: PageParams) -> Page[ClientOut]:
    """The job's clients with their statistics, ranks and contributions."""
    with read_scope(runtime.sessions) as session:
        items, total = queries.list_clients(session, job_id, limit=page.limit, offset=page.offset)
    return Page(items=items, total=total, limit=page.limit, offset=page.offset)


@router.get(
    "/{job_id}/adapter",
    response_class=Response,
    responses={
        200: {
            "description": "format=safetensors: the stored (scale-folded) adapter; "
            "format=peft: a zip whose folder holds adapter_config.json, "
            "adapter_model.safetensors and flaas_lineage.json",
            "content": {"application/octet-stream": {}, "application/zip": {}},
        },
        **error_responses(
            errors.NotFound,
            errors.NotExportable,
            INVALID_INPUT,
            notes={
                404: "No such job, or no closed round yet",
                409: "format=peft for a job with no global B (FedSA, VeRA) or no model",
            },
        ),
    },
)
def download_global_adapter(
    job_id: uuid.UUID,
    runtime: RuntimeDep,
    round: Annotated[int | None, Query(ge=0, le=1_000_000)] = None,
    format: Annotated[
        Literal["safetensors", "peft"],
        Query(description="safetensors: as stored; peft: what PeftModel.from_pretrained loads"),
    ] = "safetensors",
) -> Response:
    """The global adapter of a round (the newest one if no round is given)."""
    if format == "peft":
        with read_scope(runtime.sessions) as session:
            exported = export.peft_export(session, runtime.store, job_id, round)
        archive = exported.zip_bytes()
        return Response(
            archive,
            media_type="application/zip",
            headers={
                "ETag": f'"{hashlib.sha256(archive).hexdigest()}"',
                "Content-Disposition": f'attachment; filename="{exported.name}.zip"',
            },
        )
    with read_scope(runtime.sessions) as session:
        adapter = adapters.operator_adapter(session, job_id, round)
    return blob_response(
        runtime.store,
        adapter.storage_key,
        size=adapter.size_bytes,
        headers={
            "ETag": f'"{adapter.sha256}"',
            "Content-Disposition": f'attachment; filename="{job_id}-global.safetensors"',
        },
    )
