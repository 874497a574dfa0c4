"""Client routes: enrolment with a join token, and the client's current task."""

from __future__ import annotations

import uuid

from fastapi import APIRouter

from server.api.deps import BearerToken, CurrentClient, RuntimeDep, SessionDep
from server.schemas.api import ClientTask, Enrolled, EnrolRequest
from server.services import client_tasks, enrolment

router = APIRouter(prefix="/api/v1", tags=["clients"])


@router.post("/jobs/{job_id}/clients", status_code=201, response_model=Enrolled)
def enrol(
    job_id: uuid.UUID,
    body: EnrolRequest,
    join_token: BearerToken,
    session: SessionDep,
    runtime: RuntimeDep,
) -> Enrolled:
    """Enrol a device with the job's join token (``Authorization: Bearer <join token>``).

    The response holds the client's own credential, shown only once.
    """
    client, credential = enrolment.enrol_client(session, runtime, job_id, join_token, body)
    return Enrolled(
        client_id=client.id, job_id=client.job_id, credential=credential, rank=client.rank
    )


@router.get("/clients/me/task", response_model=ClientTask)
def my_task(client: CurrentClient, session: SessionDep) -> ClientTask:
    """What this client should do now: wait, train, or stop because the job ended."""
    return client_tasks.next_task(session, client)
