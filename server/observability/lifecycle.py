"""The lifecycle of jobs and rounds as operators see it: one log line and one counter each.

The round state machine (``services.rounds``) calls these inside the transaction of each
transition; they act once it commits (a transition that rolls back said nothing). Every line
carries the job's and round's ids as structured fields (``observability.logs``). Values are
read when the transition happens: after the commit the rows are expired.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import datetime

from sqlalchemy.orm import Session

from server.db.models import Job, Round
from server.db.session import after_commit
from server.observability import prometheus as m

log = logging.getLogger("server.lifecycle")


def _emit(
    session: Session,
    count: Callable[[], None],
    level: int,
    fields: dict[str, object],
    message: str,
    *args: object,
) -> None:
    def done() -> None:
        count()
        log.log(level, message, *args, extra=fields)

    after_commit(session, done)


def _seconds(start: datetime | None, end: datetime) -> float:
    return max(0.0, (end - start).total_seconds()) if start is not None else 0.0


def _round_fields(job_id: uuid.UUID, rnd: Round) -> dict[str, object]:
    return {"job_id": str(job_id), "round_id": str(rnd.id), "round": rnd.number}


def job_started(session: Session, job: Job, clients: int) -> None:
    fields = {"job_id": str(job.id), "clients": clients}
    message = "job %s started with %d clients"
    _emit(session, m.JOBS_STARTED.inc, logging.INFO, fields, message, job.id, clients)


def round_opened(session: Session, job: Job, rnd: Round) -> None:
    fields = {**_round_fields(job.id, rnd), "sampled": rnd.sampled, "quorum": rnd.quorum}
    message = "round %d of job %s opened: %d clients sampled, quorum %d"
    args = (rnd.number, job.id, rnd.sampled, rnd.quorum)
    _emit(session, m.ROUNDS_OPENED.inc, logging.INFO, fields, message, *args)


def round_aggregating(session: Session, rnd: Round) -> None:
    fields = _round_fields(rnd.job_id, rnd)
    message = "round %d of job %s is aggregating"
    _emit(session, lambda: None, logging.INFO, fields, message, rnd.number, rnd.job_id)


def round_closed(session: Session, job: Job, rnd: Round, stragglers: int, now: datetime) -> None:
    seconds, aggregation_s = _seconds(rnd.opened_at, now), _seconds(rnd.aggregating_at, now)
    fields = {
        **_round_fields(job.id, rnd),
        "seconds": round(seconds, 3),
        "aggregation_seconds": round(aggregation_s, 3),
        "stragglers": stragglers,
    }
    histogram = m.AGGREGATION_SECONDS.labels(job.strategy)

    def count() -> None:
        m.ROUNDS_CLOSED.inc()
        m.STRAGGLERS.inc(stragglers)
        histogram.observe(aggregation_s)

    message = "round %d of job %s closed in %.1f s (aggregation %.2f s, %d straggler(s))"
    args = (rnd.number, job.id, seconds, aggregation_s, stragglers)
    _emit(session, count, logging.INFO, fields, message, *args)


def round_failed(session: Session, rnd: Round, reason: str) -> None:
    fields = {**_round_fields(rnd.job_id, rnd), "reason": reason}
    message = "round %d of job %s failed: %s"
    args = (rnd.number, rnd.job_id, reason)
    _emit(session, m.ROUNDS_FAILED.inc, logging.WARNING, fields, message, *args)


def job_ended(session: Session, job_id: uuid.UUID, status: str, reason: str) -> None:
    """``status``: finished, failed or cancelled; ``reason`` says why (or after how much)."""
    fields: dict[str, object] = {"job_id": str(job_id), "status": status, "reason": reason}
    level = logging.WARNING if status == "failed" else logging.INFO
    counter = m.JOBS_ENDED.labels(status)
    _emit(session, counter.inc, level, fields, "job %s %s: %s", job_id, status, reason)
