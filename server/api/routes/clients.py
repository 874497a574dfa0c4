"""Client routes: enrolment with a join token, and the client's current task.

Each route opens its own transaction and commits it before it returns, on its one request
thread (``server.api.deps``): enrolment locks the job row, and a lock must never be held
while its holder waits for a thread. The long-polled task request waits on the event loop,
between short read-only transactions, holding neither a thread nor a connection while it waits.
Reads (the task, the model, an adapter) use ``read_scope``: they never commit.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from functools import partial
from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from server import errors
from server.api.blobs import blob_response
from server.api.deps import (
    BearerToken,
    CurrentClient,
    KnownClientsDep,
    RuntimeDep,
    WaitersDep,
    mark_seen_now,
    read_as_client,
)
from server.api.errors import BODY_NOT_JSON, BUSY, INVALID_INPUT, error_responses
from server.api.routes.rounds import train_task
from server.db.models import utcnow
from server.db.session import read_scope, session_scope
from server.notify import Waiters
from server.schemas.api import (
    ClientTask,
    Enrolled,
    EnrolRequest,
    JobModel,
    JoinFacts,
    TrainAssignment,
    WaitTask,
)
from server.services import adapters, client_tasks, enrolment
from server.services.enrolment import seen_is_stale
from server.services.known_clients import ClientRef, KnownClient
from server.services.runtime import Runtime

router = APIRouter(
    prefix="/api/v1", tags=["clients"], responses=error_responses(errors.Unauthorized, BUSY)
)


@router.get(
    "/jobs/{job_id}/model",
    response_model=JobModel,
    responses=error_responses(
        errors.Unauthorized,
        INVALID_INPUT,
        notes={401: "No such job, or not its join token (one answer for both)"},
    ),
)
def job_model(job_id: uuid.UUID, join_token: BearerToken, runtime: RuntimeDep) -> JobModel:
    """The job's model and training settings, for a device holding the join token: it loads the
    model and checks it is the same (``model.config_sha256``) before it profiles and enrols."""
    with read_scope(runtime.sessions) as session:
        return enrolment.job_model(session, job_id, join_token)


@router.get(
    "/jobs/{job_id}/join",
    response_model=JoinFacts,
    responses=error_responses(
        errors.Unauthorized,
        INVALID_INPUT,
        notes={401: "No such job, or not its join token (one answer for both)"},
    ),
)
def join_facts(job_id: uuid.UUID, join_token: BearerToken, runtime: RuntimeDep) -> JoinFacts:
    """What the ``/join`` page tells a person before their device joins, for a holder of the
    join token: the job, its rounds and ranks, and which adapter parts leave the device."""
    with read_scope(runtime.sessions) as session:
        return enrolment.join_facts(session, job_id, join_token)


@router.post(
    "/jobs/{job_id}/clients",
    status_code=201,
    response_model=Enrolled,
    responses={
        200: {"model": Enrolled, "description": "The same enrolment again (same credential)"},
        **error_responses(
            BODY_NOT_JSON,
            errors.Unauthorized,
            errors.Conflict,
            errors.Gone,
            errors.InvalidRequest,
            INVALID_INPUT,
            notes={
                401: "No such job, or not its join token (one answer for both)",
                409: "The name is taken, the job is full, the device's model is not the job's, "
                "or its credential is another enrolment's",
                410: "The job has ended, or started and takes no late joiners",
            },
        ),
    },
)
def enrol(
    job_id: uuid.UUID, body: EnrolRequest, join_token: BearerToken, runtime: RuntimeDep
) -> Response:
    """Enrol a device with the job's join token (``Authorization: Bearer <join token>``).

    The response holds the client's own credential, shown only once; a device that drew its
    own (``credential``) and sends the same enrolment again gets the same client, 200. A
    ``name`` is the client's identity in the job (docs/algorithms.md, "Reproducibility"):
    409 when taken.
    """
    # The job row stays locked from the enrolment's first query to this commit: both happen
    # here, on this thread, before anything goes back to the event loop.
    with session_scope(runtime.sessions) as session:
        client, credential, created = enrolment.enrol_client(
            session, runtime, job_id, join_token, body
        )
        answer = Enrolled(
            client_id=client.id, job_id=client.job_id, credential=credential, rank=client.rank
        )
    # A response, not the model: FastAPI would validate a returned model again on a second
    # thread hand-off, which 200 concurrent enrolments queue for behind each other.
    return JSONResponse(answer.model_dump(mode="json"), status_code=201 if created else 200)


@router.get(
    "/clients/me/adapter",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"application/octet-stream": {}}},
        **error_responses(
            errors.NotFound,
            errors.Conflict,
            notes={
                404: "The job has no global adapter yet",
                409: "This client has no rank yet (enrolment is still open)",
            },
        ),
    },
)
def my_latest_adapter(client: CurrentClient, runtime: RuntimeDep) -> Response:
    """The newest global adapter cut to this client's rank (safetensors): with the device's
    private tensors it makes the client's personalised adapter (``flaas client export``)."""
    with read_scope(runtime.sessions) as session:
        key = adapters.latest_client_adapter_key(session, runtime, client)
    return blob_response(runtime.store, key)


WAIT_DESCRIPTION = (
    "Long-poll: when the answer would be `wait`, hold the request until the client's answer "
    "changes (its round opens, it is sampled, the job ends) or this many seconds pass, then "
    "answer. A longer wait is cut to the coordinator's maximum (`FLAAS_TASK_WAIT_MAX_S`, "
    "30 s by default). A `wait` answer after a held request says `retry_after: 0` (ask again "
    "now, with `wait`); one answered at once (`wait=0`, or too many requests already waiting) "
    "says how long to poll after."
)


def _answer(
    session: Session, runtime: Runtime, view: client_tasks.JobView, client: ClientRef
) -> ClientTask:
    """The client's task in ``view``; a train answer carries the adapter it trains from when
    that is small (``FLAAS_INLINE_ADAPTER_MAX_BYTES``), so the client need not download it."""
    task = client_tasks.task_of(view, client.id)
    if not isinstance(task, TrainAssignment):
        return task
    small = adapters.small_starting_adapter(
        session, runtime, task.job_id, task.round_number, task.rank
    )
    return train_task(task, small)


def _own_view(runtime: Runtime, session: Session, client: ClientRef) -> ClientTask:
    """The client's task from a read of its own assignment."""
    return _answer(
        session, runtime, client_tasks.read_view(session, client.job_id, client.id), client
    )


def _own_task(runtime: Runtime, client: KnownClient) -> ClientTask:
    """The client's own task, in one short read-only transaction."""
    with read_scope(runtime.sessions) as session:
        return _own_view(runtime, session, client)


def _job_view(runtime: Runtime, job_id: uuid.UUID) -> client_tasks.JobView:
    """The view of a job that its task requests share (one read for all of them)."""
    with read_scope(runtime.sessions) as session:
        return client_tasks.read_view(session, job_id, None)


def _train_answer(runtime: Runtime, view: client_tasks.JobView, client: KnownClient) -> ClientTask:
    """A client's answer when the shared view says it trains: its own assignment read again
    (its update may have been accepted since the shared view was read)."""
    with read_scope(runtime.sessions) as session:
        return _answer(
            session, runtime, client_tasks.with_own_assignment(session, view, client.id), client
        )


async def _task(runtime: Runtime, waiters: Waiters, client: KnownClient) -> ClientTask:
    """The client's task, from its job's shared view (``Waiters.shared``).

    What may change unannounced is read again: a train answer's assignment (its update may
    have been accepted since the shared view was read), one statement, with the adapter when
    it is small, unless this process accepted that update itself; a wait for enrolment (its
    reason counts the clients enrolled so far), in the client's own view.
    """
    view = await waiters.shared(client.job_id, partial(_job_view, runtime, client.job_id))
    if view.enrolment is not None:
        return await run_in_threadpool(_own_task, runtime, client)
    task = client_tasks.task_of(view, client.id)
    if isinstance(task, TrainAssignment) and client.accepted_round_id == task.round_id:
        # This process accepted the update (after its commit): the client waits, no read.
        task = client_tasks.task_of(client_tasks.with_accepted(view, client.id), client.id)
    if isinstance(task, TrainAssignment):
        return await run_in_threadpool(_train_answer, runtime, view, client)
    return task


@router.get("/clients/me/task", response_model=ClientTask, responses=error_responses(INVALID_INPUT))
async def my_task(
    token: BearerToken,
    runtime: RuntimeDep,
    waiters: WaitersDep,
    known: KnownClientsDep,
    wait: Annotated[float, Query(ge=0, allow_inf_nan=False, description=WAIT_DESCRIPTION)] = 0.0,
) -> ClientTask:
    """What this client should do now: wait, train, or stop because the job ended.

    A client this process has authenticated before, asking again before its job changes,
    costs no database read (``known_clients``, ``Waiters.shared``)."""
    seconds = min(wait, runtime.settings.task_wait_max_s)
    # Taken before the read: an announcement during the read is seen by the wait below.
    since = waiters.mark()
    seen = known.get(token)
    if seen is None:
        # A credential this process has not authenticated yet: the client and its own task
        # in one read-only transaction, and the client kept in ``known``.
        own_view = partial(_own_view, runtime)
        client, task = await run_in_threadpool(read_as_client, runtime, known, token, own_view)
    else:
        client = seen
        if seen_is_stale(client, utcnow(), runtime.settings.last_seen_interval_s):
            await run_in_threadpool(mark_seen_now, runtime, client)
        task = await _task(runtime, waiters, client)
    if seconds <= 0 or not isinstance(task, WaitTask):
        return task
    with waiters.waiting(client.job_id, since) as changed:
        if changed is None:  # the waiter limit: answer now; polled again after about the wait
            return task.model_copy(update={"retry_after": seconds * random.uniform(0.5, 1)})
        deadline = asyncio.get_running_loop().time() + seconds
        while isinstance(task, WaitTask):
            try:
                async with asyncio.timeout_at(deadline):  # no task per wait, as wait_for makes
                    await changed.wait()
            except TimeoutError:
                break  # nothing announced: the answer read last stands
            changed.clear()
            # An announcement is a hint: re-read, in the one read its woken waiters share.
            task = await _task(runtime, waiters, client)
    if isinstance(task, WaitTask):
        return task.model_copy(update={"retry_after": 0.0})
    return task
