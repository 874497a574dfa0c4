"""The round state machine: the only place where jobs and rounds change status.

    Job:    enrolling -> running -> finished | cancelled | failed
    Round:  open -> aggregating -> closed | failed      (round 0: the initial adapter, closed)

Every transition is a compare-and-set ``UPDATE ... WHERE status = <expected>``, so two
actors racing (an upload and the deadline scheduler, a redelivered task and its
original, two coordinator processes) can never both win. The database is the only
state: a coordinator restarted at any point continues from it (``recover``).

A transition that changes what a client is told (the job started, ended, failed or was
cancelled; a round closed and the next opened) announces its job after commit (``announce``),
which wakes the clients long-polling for their task (``server.notify``).

Lock order: a transaction that locks both takes a job's round rows before the job row (an
upload, a deadline or a close changes the round, then the job); ``cancel_job`` locks the open
rounds first too, so a cancel and a deadline never wait on each other (a deadlock). Every
such transaction begins and commits on one thread and does no waiting in between besides
the database's own (README, "Concurrency model").
"""

from __future__ import annotations

import functools
import hashlib
import random
import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, bindparam, func, select, update
from sqlalchemy.orm import Session

from server.db.models import (
    CLIENT_ORDER,
    Client,
    ClientUpdate,
    GlobalAdapter,
    Job,
    JobStatus,
    Round,
    RoundStatus,
    UpdateStatus,
    utcnow,
)
from server.db.session import after_commit
from server.errors import Conflict
from server.observability import lifecycle
from server.services import ranking
from server.services.runtime import Runtime
from server.services.strategies import (
    default_quorum,
    extra_of,
    modules_of,
    sample_size,
    spec_of,
    strategy_for,
)
from server.storage import global_key
from server.tensors import save_adapter


def transition(
    session: Session, model: Any, row_id: uuid.UUID, expected: str, **values: Any
) -> bool:
    """Set ``values`` on the row only if its status is still ``expected``; True if it was."""
    result = session.execute(
        update(model)
        .where(model.id == row_id, model.status == expected)
        .values(**values)
        .execution_options(synchronize_session="fetch")
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


def announce(session: Session, rt: Runtime, job_id: uuid.UUID) -> None:
    """Tell the job's waiting clients, once this transaction commits, that their task may have
    changed (only after commit: a woken client must read the new state)."""
    after_commit(session, functools.partial(rt.notify, job_id))


def start_job(session: Session, rt: Runtime, job: Job, now: datetime) -> bool:
    """Close enrolment: assign ranks, store the initial adapter as round 0, open round 1."""
    if not transition(
        session, Job, job.id, JobStatus.ENROLLING, status=JobStatus.RUNNING, started_at=now
    ):
        return False
    spec = spec_of(job)
    clients = list(
        session.scalars(select(Client).where(Client.job_id == job.id).order_by(*CLIENT_ORDER))
    )
    ranking.rank_cohort(job, spec, clients)
    initial = strategy_for(job).initial_adapter(
        modules_of(spec), rank=job.r_max, seed=job.seed, extra=extra_of(spec)
    )
    blob = save_adapter(initial)
    key = global_key(job.id, 0)
    rt.store.put_bytes(key, blob)
    round0 = Round(
        job_id=job.id,
        number=0,
        status=RoundStatus.CLOSED,
        opened_at=now,
        deadline_at=now,
        closed_at=now,
    )
    session.add(round0)
    session.flush()
    session.add(
        GlobalAdapter(
            round_id=round0.id,
            storage_key=key,
            sha256=hashlib.sha256(blob).hexdigest(),
            size_bytes=len(blob),
            rank=job.r_max,
            n_updates=0,
            total_samples=0,
        )
    )
    open_round(session, job, 1, now)
    announce(session, rt, job.id)
    lifecycle.job_started(session, job, len(clients))
    return True


def open_round(session: Session, job: Job, number: int, now: datetime) -> Round:
    """Sample the round's clients (seeded by job and round, drawn in ``CLIENT_ORDER``: the
    same seed and names sample the same clients in every run) and create their updates."""
    spec = spec_of(job)
    eligible = list(
        session.scalars(
            select(Client)
            .where(Client.job_id == job.id, Client.rank.is_not(None))
            .order_by(*CLIENT_ORDER)
        )
    )
    wanted = sample_size(spec, len(eligible))
    chosen = random.Random(f"{job.seed}:{number}").sample(eligible, wanted)
    rnd = Round(
        job_id=job.id,
        number=number,
        status=RoundStatus.OPEN,
        sampled=len(chosen),
        quorum=default_quorum(len(chosen), spec.round.min_updates),
        opened_at=now,
        deadline_at=now + timedelta(seconds=spec.round.timeout_s),
    )
    session.add(rnd)
    session.flush()
    for client in chosen:
        session.add(
            ClientUpdate(round_id=rnd.id, client_id=client.id, rank=client.rank, assigned_at=now)
        )
    job.current_round = number
    lifecycle.round_opened(session, job, rnd)
    return rnd


def _accepted_in(round_id: Any) -> Select[int]:
    """The count of accepted updates in the round ``round_id`` (a value or a column)."""
    return (
        select(func.count())
        .select_from(ClientUpdate)
        .where(ClientUpdate.round_id == round_id, ClientUpdate.status == UpdateStatus.ACCEPTED)
    )


_ACCEPTED_COUNT = _accepted_in(bindparam("round_id"))  # built once: it runs per upload


def accepted_count(session: Session, round_id: uuid.UUID) -> int:
    return session.scalar(_ACCEPTED_COUNT, {"round_id": round_id}) or 0


def request_aggregation(session: Session, rt: Runtime, rnd: Round, now: datetime) -> bool:
    """open -> aggregating, then queue the aggregation once this transaction commits."""
    if not transition(
        session, Round, rnd.id, RoundStatus.OPEN, status=RoundStatus.AGGREGATING, aggregating_at=now
    ):
        return False
    round_id = rnd.id
    after_commit(session, lambda: rt.dispatch(round_id))
    lifecycle.round_aggregating(session, rnd)
    return True


def close_round(
    session: Session,
    rt: Runtime,
    round_id: uuid.UUID,
    adapter: GlobalAdapter,
    aggregation: dict[str, Any],
    now: datetime,
) -> bool:
    """aggregating -> closed with its global adapter; open the next round or finish the job.

    Returns False (and changes nothing) if another worker already closed the round.
    """
    if not transition(
        session,
        Round,
        round_id,
        RoundStatus.AGGREGATING,
        status=RoundStatus.CLOSED,
        closed_at=now,
        aggregation=aggregation,
    ):
        return False
    rnd = session.get_one(Round, round_id)
    session.add(adapter)
    missed = session.execute(
        update(ClientUpdate)
        .where(ClientUpdate.round_id == round_id, ClientUpdate.status == UpdateStatus.PENDING)
        .values(status=UpdateStatus.MISSED)
    )
    job = session.get_one(Job, rnd.job_id, with_for_update=True)
    lifecycle.round_closed(session, job, rnd, missed.rowcount, now)  # type: ignore[attr-defined]
    if job.status != JobStatus.RUNNING:
        return True
    announce(session, rt, job.id)
    if rnd.number >= job.total_rounds:
        if transition(
            session, Job, job.id, JobStatus.RUNNING, status=JobStatus.FINISHED, finished_at=now
        ):
            lifecycle.job_ended(session, job.id, "finished", f"after {rnd.number} rounds")
    else:
        open_round(session, job, rnd.number + 1, now)
    return True


def fail_round(
    session: Session, rt: Runtime, round_id: uuid.UUID, reason: str, now: datetime
) -> None:
    """Mark the round failed (from open or aggregating) and fail its job with the reason."""
    rnd = session.get_one(Round, round_id)
    for expected in (RoundStatus.OPEN, RoundStatus.AGGREGATING):
        if transition(
            session,
            Round,
            round_id,
            expected,
            status=RoundStatus.FAILED,
            failure_reason=reason,
            closed_at=now,
        ):
            break
    else:
        return
    lifecycle.round_failed(session, rnd, reason)
    fail_job(session, rt, rnd.job_id, f"round {rnd.number} failed: {reason}", now)


def fail_job(session: Session, rt: Runtime, job_id: uuid.UUID, reason: str, now: datetime) -> None:
    for expected in (JobStatus.ENROLLING, JobStatus.RUNNING):
        if transition(
            session,
            Job,
            job_id,
            expected,
            status=JobStatus.FAILED,
            failure_reason=reason,
            finished_at=now,
        ):
            announce(session, rt, job_id)
            lifecycle.job_ended(session, job_id, "failed", reason)
            return


def cancel_job(session: Session, rt: Runtime, job: Job, now: datetime) -> Job:
    """Cancel a job that has not ended; its open round is failed, nothing more is accepted."""
    # Rounds before the job (the module's lock order): a deadline failing the open round
    # holds the round and then updates the job.
    session.scalars(
        select(Round.id)
        .where(Round.job_id == job.id, Round.status == RoundStatus.OPEN)
        .with_for_update()
    ).all()
    for expected in (JobStatus.ENROLLING, JobStatus.RUNNING):
        if transition(
            session,
            Job,
            job.id,
            expected,
            status=JobStatus.CANCELLED,
            finished_at=now,
            failure_reason="cancelled by an operator",
        ):
            session.execute(
                update(Round)
                .where(Round.job_id == job.id, Round.status == RoundStatus.OPEN)
                .values(status=RoundStatus.FAILED, failure_reason="job cancelled", closed_at=now)
            )
            session.refresh(job)
            announce(session, rt, job.id)
            lifecycle.job_ended(session, job.id, "cancelled", "cancelled by an operator")
            return job
    session.refresh(job)  # the status that refused the cancel, not the one read before it
    raise Conflict(
        f"job {job.id} is already {job.status}; only enrolling or running jobs can be cancelled"
    )


def recover(session: Session, rt: Runtime) -> int:
    """Re-queue every round left aggregating (a coordinator or worker died mid-aggregation),
    and start every round left open with all its updates in (a coordinator died between its
    last acceptance's commit and the count after it, ``uploads.aggregate_if_complete``);
    returns how many."""
    stuck = list(session.scalars(select(Round.id).where(Round.status == RoundStatus.AGGREGATING)))
    for round_id in stuck:
        after_commit(session, functools.partial(rt.dispatch, round_id))
    accepted = _accepted_in(Round.id).scalar_subquery()
    complete = session.scalars(
        select(Round).where(Round.status == RoundStatus.OPEN, accepted >= Round.sampled)
    ).all()
    now = utcnow()
    return len(stuck) + sum(request_aggregation(session, rt, rnd, now) for rnd in complete)
