"""The one decorator for task policy: how a round step is delivered, acknowledged and failed.

Every round step is idempotent (row lock, status guard, claim, compare-and-set: see
``services.aggregation``), which is what makes the delivery policy below safe:

* ``acks_late``: the message is acknowledged only once the step returned, so a worker that
  dies mid-step leaves it in the broker;
* ``reject_on_worker_lost``: a step whose worker process was killed (OOM, SIGKILL) is
  requeued instead of acknowledged; the step's claim counts these deliveries and fails the
  round after ``aggregation_max_attempts``, so it can never loop;
* keyword-only ids, reloaded state, no result stored;
* an expected failure (corrupt blob, invalid update) already fails the round inside the step;
  the soft time limit fails it here with a reason shown in the API. Nothing is retried.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded

from server.db.models import utcnow
from server.db.session import session_scope
from server.services import rounds
from server.services.runtime import Runtime
from server.tasks.worker import worker_runtime

log = logging.getLogger(__name__)

RoundStep = Callable[..., None]  # (rt, round_id, attempt, **kwargs)


def round_step(name: str) -> Callable[[RoundStep], Task]:
    """Register ``fn(rt, round_id, attempt, **kwargs)`` as the idempotent task ``name``,
    called as ``task.apply_async(kwargs={"round_id": "<uuid>", ...})``."""

    def decorate(fn: RoundStep) -> Task:
        def task(self: Task, *, round_id: str, **kwargs: Any) -> None:
            rt = worker_runtime()
            rid = uuid.UUID(round_id)
            try:
                fn(rt, rid, self.request.id, **kwargs)
            except SoftTimeLimitExceeded:
                _fail_on_time_limit(rt, rid, name)

        task.__doc__ = fn.__doc__
        return shared_task(
            name=name, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True
        )(task)

    return decorate


def periodic(name: str) -> Callable[[Callable[[Runtime], None]], Task]:
    """Register ``fn(rt)`` as a beat task: acknowledged early, never requeued (the next beat
    runs it again), no result."""

    def decorate(fn: Callable[[Runtime], None]) -> Task:
        def task() -> None:
            fn(worker_runtime())

        task.__doc__ = fn.__doc__
        return shared_task(name=name, ignore_result=True, acks_late=False)(task)

    return decorate


def _fail_on_time_limit(rt: Runtime, round_id: uuid.UUID, name: str) -> None:
    reason = (
        f"aggregation failed: {name} exceeded its time limit of "
        f"{rt.settings.aggregation_time_limit_s} s (FLAAS_AGGREGATION_TIME_LIMIT_S)"
    )
    with session_scope(rt.sessions) as session:
        rounds.fail_round(session, rt, round_id, reason, utcnow())
    log.error("round %s: %s", round_id, reason)
