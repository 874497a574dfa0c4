"""Client routes: enrolment with a join token, and the client's current task.

Each route opens its own transaction and commits it before it returns, on its one request
thread (``server.api.deps``): enrolment locks the job row, and a lock must never be held
while its holder waits for a thread.
"""

from __future__ import annotations

import uuid

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from server.api.deps import BearerToken, CurrentClient, RuntimeDep
from server.db.session import session_scope
from server.schemas.api import ClientTask, Enrolled, EnrolRequest, JobModel
from server.services import adapters, client_tasks, enrolment

router = APIRouter(prefix="/api/v1", tags=["clients"])


@router.get("/jobs/{job_id}/model", response_model=JobModel)
def job_model(job_id: uuid.UUID, join_token: BearerToken, runtime: RuntimeDep) -> JobModel:
    """The job's model and training settings, for a device holding the join token: it loads the
    model and checks it is the same (``model.config_sha256``) before it profiles and enrols."""
    with session_scope(runtime.sessions) as session:
        return enrolment.job_model(session, job_id, join_token)


@router.post("/jobs/{job_id}/clients", status_code=201, response_model=Enrolled)
def enrol(
    job_id: uuid.UUID,
    body: EnrolRequest,
    join_token: BearerToken,
    runtime: RuntimeDep,
) -> Enrolled:
    """Enrol a device with the job's join token (``Authorization: Bearer <join token>``).

    The response holds the client's own credential, shown only once.
    """
    # The job row stays locked from the enrolment's first query to this commit: both happen
    # here, on this thread, before anything goes back to the event loop.
    with session_scope(runtime.sessions) as session:
        client, credential = enrolment.enrol_client(session, runtime, job_id, join_token, body)
        return Enrolled(
            client_id=client.id, job_id=client.job_id, credential=credential, rank=client.rank
        )


@router.get(
    "/clients/me/adapter",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def my_latest_adapter(client: CurrentClient, runtime: RuntimeDep) -> StreamingResponse:
    """The newest global adapter cut to this client's rank (safetensors): with the device's
    private tensors it makes the client's personalised adapter (``flaas client export``)."""
    with session_scope(runtime.sessions) as session:
        key = adapters.latest_client_adapter_key(session, runtime, client)
    return StreamingResponse(
        runtime.store.iter_chunks(key),
        media_type="application/octet-stream",
        headers={"Content-Length": str(runtime.store.size(key))},
    )


@router.get("/clients/me/task", response_model=ClientTask)
def my_task(client: CurrentClient, runtime: RuntimeDep) -> ClientTask:
    """What this client should do now: wait, train, or stop because the job ended."""
    with session_scope(runtime.sessions) as session:
        return client_tasks.next_task(session, client)
