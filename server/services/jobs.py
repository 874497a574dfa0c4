"""Jobs: creation (with its join token), listing, lookup and cancellation."""

from __future__ import annotations

import secrets
import uuid
from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from server.aggregation import available_strategies, strategy_class
from server.db.models import Client, Job, JobStatus, utcnow
from server.db.paging import page
from server.errors import InvalidRequest, NotFound
from server.schemas.job_spec import JobSpec
from server.security import JOIN_TOKEN_PREFIX, hash_secret, new_secret
from server.services import ranking, rounds
from server.services.models import with_derived_layout
from server.services.runtime import Runtime
from server.services.strategies import extra_of, modules_of, strategy_for_spec


def create_job(session: Session, spec: JobSpec, *, max_clients: int) -> tuple[Job, str]:
    """Store a new job in ``enrolling`` state; returns it with its join token (shown once)."""
    spec = with_derived_layout(spec)
    strategy = strategy_for_spec(spec)
    # Ask the strategy for a rank-r_min upload spec now, so a spec the strategy cannot
    # serve (e.g. VeRA with extras it cannot share) fails at creation, not mid-job.
    try:
        strategy.upload_spec(modules_of(spec), spec.rank.r_min, extra_of(spec))
    except ValueError as exc:
        raise InvalidRequest(f"strategy {spec.strategy}: {exc}") from exc
    for limit_name, value in (
        ("enrolment.min_clients", spec.enrolment.min_clients),
        ("enrolment.target_clients", spec.enrolment.target_clients or 0),
    ):
        if value > max_clients:
            raise InvalidRequest(
                f"{limit_name} ({value}) exceeds this coordinator's limit of "
                f"{max_clients} clients per job"
            )
    if strategy.equal_ranks and spec.rank.policy != "fixed" and spec.rank.r_min != spec.rank.r_max:
        unequal = [n for n in available_strategies() if not strategy_class(n).equal_ranks]
        raise InvalidRequest(
            f"strategy {spec.strategy} needs every client at the same rank: "
            f'set rank.policy to "fixed" (or choose {" / ".join(unequal)})'
        )
    ranking.check_budget(spec, max_clients=max_clients)
    seed = spec.seed if spec.seed is not None else secrets.randbelow(2**62)
    spec = spec.model_copy(update={"seed": seed})
    token = new_secret(JOIN_TOKEN_PREFIX)
    now = utcnow()
    job = Job(
        name=spec.name,
        status=JobStatus.ENROLLING,
        spec=spec.model_dump(mode="json"),
        strategy=spec.strategy,
        strategy_options=dict(spec.strategy_options),
        rank_policy=spec.rank.policy,
        r_min=spec.rank.r_min,
        r_max=spec.rank.r_max,
        total_rounds=spec.rounds,
        current_round=0,
        seed=seed,
        join_token_hash=hash_secret(token),
        created_at=now,
        enrolment_deadline_at=now + timedelta(seconds=spec.enrolment.timeout_s),
    )
    session.add(job)
    session.flush()
    return job, token


def get_job(session: Session, job_id: uuid.UUID) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"job {job_id} does not exist")
    return job


def count_clients(session: Session, job_ids: list[uuid.UUID]) -> dict[uuid.UUID, int]:
    if not job_ids:
        return {}
    rows = session.execute(
        select(Client.job_id, func.count())
        .where(Client.job_id.in_(job_ids))
        .group_by(Client.job_id)
    )
    return dict(rows.all())


def list_jobs(
    session: Session, *, status: JobStatus | None, limit: int, offset: int
) -> tuple[list[Job], int]:
    query = select(Job)
    if status is not None:
        query = query.where(Job.status == status)
    return page(session, query, Job.created_at.desc(), Job.id, limit=limit, offset=offset)


def cancel_job(session: Session, rt: Runtime, job_id: uuid.UUID) -> Job:
    return rounds.cancel_job(session, rt, get_job(session, job_id), utcnow())
