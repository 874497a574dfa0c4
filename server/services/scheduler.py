"""The periodic check: what the scheduler runs every ``scheduler_interval_s``.

The embedded coordinator runs it on a thread, a production deployment in Celery beat; either
way it is the same function, and every step it takes is idempotent.
"""

from __future__ import annotations

import functools
import logging
from datetime import datetime, timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from server.db.models import Job, JobStatus, Round, RoundStatus
from server.db.session import after_commit, read_scope, session_scope
from server.services import deadlines
from server.services.runtime import Runtime
from server.services.sharding import ensure_plan, shards_of
from server.services.strategies import spec_of

log = logging.getLogger(__name__)


def run_periodic_check(rt: Runtime, now: datetime) -> bool:
    """The scheduler's tick: a read-only look first, and a write transaction only when a
    deadline has passed or a round is aggregating (most ticks, on an idle or a busy
    coordinator, find nothing to do: they cost no commit and, on SQLite, no write lock).
    True if it ran the check."""
    with read_scope(rt.sessions) as session:
        due = check_due(session, now)
    if due:
        with session_scope(rt.sessions) as session:
            periodic_check(session, rt, now)
    return due


def check_due(session: Session, now: datetime) -> bool:
    """Whether ``periodic_check`` may have anything to do: a passed enrolment or round
    deadline, or a round aggregating (``redispatch_stale`` judges whether it is stale)."""
    passed_enrolment = select(Job.id).where(
        Job.status == JobStatus.ENROLLING, Job.enrolment_deadline_at <= now
    )
    passed_round = select(Round.id).where(
        or_(
            Round.status == RoundStatus.AGGREGATING,
            (Round.status == RoundStatus.OPEN) & (Round.deadline_at <= now),
        )
    )
    return (
        session.scalar(passed_enrolment.limit(1)) is not None
        or session.scalar(passed_round.limit(1)) is not None
    )


def periodic_check(session: Session, rt: Runtime, now: datetime) -> None:
    """What the scheduler (embedded thread or Celery beat) runs every ``scheduler_interval_s``:
    passed deadlines and aggregations without progress."""
    deadlines.apply_passed(session, rt, now)
    redispatch_stale(session, rt, now)


def redispatch_stale(session: Session, rt: Runtime, now: datetime) -> int:
    """Re-queue rounds that have been aggregating without any progress for twice the broker's
    visibility timeout (a lost message: a broker restarted without persistence, a failed
    publish). Duplicates are harmless: every step is idempotent."""
    window = timedelta(seconds=2 * rt.settings.broker_visibility_timeout_s)
    requeued = 0
    for rnd in session.scalars(select(Round).where(Round.status == RoundStatus.AGGREGATING)):
        shards = shards_of(session, rnd.id)
        moments = [rnd.aggregating_at or rnd.opened_at]
        for shard in shards:
            moments += [m for m in (shard.claimed_at, shard.dispatched_at, shard.finished_at) if m]
        if now - max(moments) <= window:
            continue
        if not shards:  # the first message was lost: plan now, so the re-dispatch is recorded
            job = session.get_one(Job, rnd.job_id)
            shards = ensure_plan(session, rt, rnd, len(spec_of(job).modules))
        for shard in shards:
            shard.dispatched_at = now
        after_commit(session, functools.partial(rt.dispatch, rnd.id))
        log.warning("round %s: no aggregation progress since %s; re-queued", rnd.id, max(moments))
        requeued += 1
    return requeued
