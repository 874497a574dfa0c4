"""What a client should do now: wait, train (with everything it needs but the URLs, which the
API adds), or stop; and a round as its client's download or upload reads it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy import and_, bindparam, func, select
from sqlalchemy.orm import Session

from server.db.models import (
    Client,
    ClientUpdate,
    Job,
    JobStatus,
    Round,
    RoundStatus,
    UpdateStatus,
    utcnow,
)
from server.errors import Forbidden, NotFound
from server.schemas.api import FinishedTask, TrainAssignment, WaitTask
from server.services.known_clients import ClientRef
from server.services.strategies import client_alpha, parts, spec_of, strategy_for

Task = WaitTask | TrainAssignment | FinishedTask

ENROLMENT_POLL_S = 2.0
ROUND_POLL_S = 1.0


@dataclass(frozen=True)
class Assignment:
    """A sampled client's update in a round, as its download and upload read it."""

    id: uuid.UUID
    status: str
    rank: int
    sha256: str | None  # the accepted update's


@dataclass(frozen=True)
class ClientRound:
    """A round of the client's job, and the client's update in it (None: not sampled)."""

    job_id: uuid.UUID
    number: int
    status: str
    sampled: int  # the round's sampled clients: all in when as many updates are accepted
    update: Assignment | None


#: Round ``round_id`` and client ``client_id``'s update in it (built once: ``server.db.session``).
_CLIENT_ROUND = (
    select(
        Round.job_id,
        Round.number,
        Round.status,
        Round.sampled,
        ClientUpdate.id,
        ClientUpdate.status,
        ClientUpdate.rank,
        ClientUpdate.sha256,
    )
    .select_from(Round)
    .outerjoin(
        ClientUpdate,
        and_(ClientUpdate.round_id == Round.id, ClientUpdate.client_id == bindparam("client_id")),
    )
    .where(Round.id == bindparam("round_id"))
)


def client_round(session: Session, client: ClientRef, round_id: uuid.UUID) -> ClientRound:
    """Round ``round_id`` and ``client``'s update in it, in one read of the columns asked
    (no ORM entity: these reads are most of a loaded coordinator's); 404 when there is no such
    round, 403 when it belongs to another job."""
    row = session.execute(
        _CLIENT_ROUND, {"client_id": client.id, "round_id": round_id}
    ).one_or_none()
    if row is None:
        raise NotFound(f"round {round_id} does not exist")
    job_id, number, status, sampled, update_id, update_status, rank, sha256 = row
    if job_id != client.job_id:
        raise Forbidden(f"round {round_id} belongs to another job")
    update = None if update_id is None else Assignment(update_id, update_status, rank, sha256)
    return ClientRound(job_id, number, status, sampled, update)


def _clock(at: datetime, now: datetime) -> str:
    return f"{at:%H:%M:%S} UTC" if at.date() == now.date() else f"{at:%Y-%m-%d %H:%M:%S} UTC"


def enrolment_reason(session: Session, job: Job, now: datetime | None = None) -> str:
    """What a client waiting for enrolment to close is told: how many have enrolled, how many
    the job needs, and until when (the job starts at once when its target is reached, at the
    deadline with at least the minimum, and fails at the deadline with fewer)."""
    enrolment = spec_of(job).enrolment
    enrolled = (
        session.scalar(select(func.count()).select_from(Client).where(Client.job_id == job.id)) or 0
    )
    until = _clock(job.enrolment_deadline_at, now or utcnow())
    target = enrolment.target_clients
    if enrolled < enrolment.min_clients:
        early = f"; it starts at once with {target}" if target else ""
        return (
            f"enrolment is open: {enrolled} of {enrolment.min_clients} clients needed have "
            f"enrolled, until {until}{early}"
        )
    early = f", or as soon as {target} have enrolled" if target else ""
    return (
        f"enrolment is open: {enrolled} clients have enrolled ({enrolment.min_clients} needed); "
        f"the job starts at {until}{early}"
    )


@dataclass(frozen=True)
class JobView:
    """What clients' tasks are computed from, read in one transaction: the job, its current
    round, and the round's assignments (every sampled client's, or one client's)."""

    job: Job
    round: Round | None
    assignments: dict[uuid.UUID, tuple[str, int]]  # client id -> (update status, rank)
    enrolment: str | None  # what a client waiting for enrolment is told


# A job's round by number, and its assignments (all of them, or one client's); built once.
_ROUND = select(Round).where(
    Round.job_id == bindparam("job_id"), Round.number == bindparam("number")
)
_ASSIGNMENTS = select(ClientUpdate.client_id, ClientUpdate.status, ClientUpdate.rank).where(
    ClientUpdate.round_id == bindparam("round_id")
)
_OWN_ASSIGNMENT = _ASSIGNMENTS.where(ClientUpdate.client_id == bindparam("client_id"))


def read_view(session: Session, job_id: uuid.UUID, client_id: uuid.UUID | None) -> JobView:
    """The job's view for one client (``client_id``), or for all of them (None: the read that
    the requests woken by one announcement share, ``server.notify.Waiters.shared``)."""
    job = session.get_one(Job, job_id)
    enrolment = enrolment_reason(session, job) if job.status == JobStatus.ENROLLING else None
    rnd = None
    assignments: dict[uuid.UUID, tuple[str, int]] = {}
    if job.status == JobStatus.RUNNING:
        rnd = session.scalar(_ROUND, {"job_id": job.id, "number": job.current_round})
    if rnd is not None and rnd.status == RoundStatus.OPEN:
        query, params = _ASSIGNMENTS, {"round_id": rnd.id}
        if client_id is not None:
            query, params = _OWN_ASSIGNMENT, {**params, "client_id": client_id}
        rows = session.execute(query, params)
        assignments = {row.client_id: (row.status, row.rank) for row in rows}
    return JobView(job, rnd, assignments, enrolment)


def with_own_assignment(session: Session, view: JobView, client_id: uuid.UUID) -> JobView:
    """``view`` with the client's assignment in the view's open round read again: whether its
    update was accepted since the view was read, which nothing announces (a change of the job
    or the round is announced: ``server.notify``). One statement."""
    assert view.round is not None
    row = session.execute(
        _OWN_ASSIGNMENT, {"round_id": view.round.id, "client_id": client_id}
    ).one_or_none()
    return replace(view, assignments={} if row is None else {client_id: (row.status, row.rank)})


def with_accepted(view: JobView, client_id: uuid.UUID) -> JobView:
    """``view`` with the client's update in the view's open round accepted: what a process
    that accepted it knows without a read (``known_clients.mark_accepted``; an acceptance is
    final)."""
    _, rank = view.assignments[client_id]
    return replace(view, assignments={client_id: (UpdateStatus.ACCEPTED, rank)})


def task_of(view: JobView, client_id: uuid.UUID) -> Task:
    """What the client should do now, by the view."""
    job, rnd = view.job, view.round
    if JobStatus(job.status).ended:
        return FinishedTask(status=job.status, reason=job.failure_reason)
    if view.enrolment is not None:
        return WaitTask(retry_after=ENROLMENT_POLL_S, reason=view.enrolment)
    if rnd is None or rnd.status != RoundStatus.OPEN:
        return WaitTask(retry_after=ROUND_POLL_S, reason="the current round is being aggregated")
    assignment = view.assignments.get(client_id)
    if assignment is None:
        return WaitTask(retry_after=ROUND_POLL_S, reason=f"not sampled for round {rnd.number}")
    status, rank = assignment
    if status != UpdateStatus.PENDING:
        return WaitTask(
            retry_after=ROUND_POLL_S, reason=f"update for round {rnd.number} already accepted"
        )
    spec = spec_of(job)
    strategy = strategy_for(job)
    shared, frozen = parts(job, rank)
    return TrainAssignment(
        job_id=job.id,
        round_id=rnd.id,
        round_number=rnd.number,
        deadline_at=rnd.deadline_at,
        rank=rank,
        lora_alpha=client_alpha(spec, rank),
        use_rslora=strategy.use_rslora,
        adapter_type=strategy.adapter_type,
        strategy=job.strategy,
        shared_parts=shared,
        frozen_parts=frozen,
        training=spec.training,
        model=spec.model,
        seed=job.seed,
    )
