"""Deadlines: what a passed enrolment window or round deadline does, through the round state
machine's transitions (``services.rounds``).

An enrolment window that closes with the job's minimum starts the job, with fewer fails it. A
round deadline with its quorum of updates starts the aggregation; below it, the round is
extended (``round.on_deadline: extend``, at most ``max_extensions`` times) or fails. The
periodic check (``services.scheduler``) applies them; every step is a compare-and-set, so a
deadline racing an upload or another scheduler changes a round once.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from server.db.models import Client, Job, JobStatus, Round, RoundStatus
from server.services import rounds
from server.services.runtime import Runtime
from server.services.strategies import spec_of

log = logging.getLogger(__name__)


def apply_passed(session: Session, rt: Runtime, now: datetime) -> None:
    """Apply every deadline that has passed: enrolment windows and round deadlines."""
    for job in session.scalars(
        select(Job).where(Job.status == JobStatus.ENROLLING, Job.enrolment_deadline_at <= now)
    ):
        _close_enrolment_at_deadline(session, rt, job, now)
    for rnd in session.scalars(
        select(Round).where(Round.status == RoundStatus.OPEN, Round.deadline_at <= now)
    ):
        _apply_round_deadline(session, rt, rnd, now)


def _close_enrolment_at_deadline(session: Session, rt: Runtime, job: Job, now: datetime) -> None:
    spec = spec_of(job)
    enrolled = (
        session.scalar(select(func.count()).select_from(Client).where(Client.job_id == job.id)) or 0
    )
    if enrolled >= spec.enrolment.min_clients:
        rounds.start_job(session, rt, job, now)
    else:
        rounds.fail_job(
            session,
            rt,
            job.id,
            f"enrolment closed with {enrolled} client(s); the job needs at least "
            f"{spec.enrolment.min_clients}",
            now,
        )


def _apply_round_deadline(session: Session, rt: Runtime, rnd: Round, now: datetime) -> None:
    accepted = rounds.accepted_count(session, rnd.id)
    if accepted >= rnd.quorum:
        rounds.request_aggregation(session, rt, rnd, now)
        return
    job = session.get_one(Job, rnd.job_id)
    policy = spec_of(job).round
    if policy.on_deadline == "extend" and rnd.extensions < policy.max_extensions:
        rounds.transition(
            session,
            Round,
            rnd.id,
            RoundStatus.OPEN,
            extensions=rnd.extensions + 1,
            deadline_at=now + timedelta(seconds=policy.timeout_s),
        )
        log.warning(
            "round %s (#%d) deadline passed with %d/%d updates: extended (%d/%d)",
            rnd.id,
            rnd.number,
            accepted,
            rnd.quorum,
            rnd.extensions + 1,
            policy.max_extensions,
            extra={"job_id": str(rnd.job_id), "round_id": str(rnd.id), "round": rnd.number},
        )
        return
    rounds.fail_round(
        session,
        rt,
        rnd.id,
        f"deadline passed with {accepted} update(s) of the {rnd.quorum} needed "
        f"(after {rnd.extensions} extension(s))",
        now,
    )
