"""Job definitions: what a job is (its spec and strategy), kept in memory so that a client's
adapter download or upload does not read the job row to learn the shapes it must send.

A job's spec, strategy, strategy options and r_max are written once, when it is created, and
never change (its status, rounds and ranking do, and are not here), so a cached definition
cannot go stale. At most ``JOB_DEFINITIONS_CACHED`` are kept per process, the least recently
used dropped first; job ids are random UUIDs, so one process serving several databases (the
tests) cannot confuse two jobs.
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.db.models import Job
from server.errors import NotFound


@dataclass(frozen=True)
class JobDefinition:
    """The immutable part of a job: what ``services.strategies`` asks of it."""

    id: uuid.UUID
    spec: dict[str, Any]
    strategy: str
    strategy_options: dict[str, Any]
    r_max: int


#: Definitions a coordinator process keeps (a few KB each: a spec lists the adapted modules).
JOB_DEFINITIONS_CACHED = 1024
_COLUMNS = (Job.id, Job.spec, Job.strategy, Job.strategy_options, Job.r_max)
_lock = threading.Lock()
_cached: OrderedDict[uuid.UUID, JobDefinition] = OrderedDict()


def job_definition(session: Session, job_id: uuid.UUID) -> JobDefinition:
    """The definition of job ``job_id``: from memory, or read (its five columns) and kept."""
    with _lock:
        known = _cached.get(job_id)
        if known is not None:
            _cached.move_to_end(job_id)
            return known
    row = session.execute(select(*_COLUMNS).where(Job.id == job_id)).one_or_none()
    if row is None:
        raise NotFound(f"job {job_id} does not exist")
    definition = JobDefinition(*row)
    with _lock:
        _cached[job_id] = definition
        while len(_cached) > JOB_DEFINITIONS_CACHED:
            _cached.popitem(last=False)
    return definition
