"""The Celery tasks: thin wrappers of the task bodies in ``services.aggregation``.

Arguments are keyword-only ids (``round_id`` as a string, ``index``); each task reloads its
state from the database. Steps chain through the database: the entry step queues the shards
of a sharded round, the last shard queues the combine, always after commit.
"""

from __future__ import annotations

import uuid

from server.db.models import utcnow
from server.services import aggregation, scheduler
from server.services.runtime import Runtime
from server.tasks.config import CHECK_DEADLINES
from server.tasks.dispatch import AGGREGATE_ROUND, AGGREGATE_SHARD, COMBINE_ROUND
from server.tasks.policy import periodic, round_step


@round_step(AGGREGATE_ROUND)
def aggregate_round(rt: Runtime, round_id: uuid.UUID, attempt: str) -> None:
    """``aggregate_round(*, round_id)``: aggregate a round, or queue its shards."""
    aggregation.aggregate_round(rt, round_id, attempt=attempt)


@round_step(AGGREGATE_SHARD)
def aggregate_shard(rt: Runtime, round_id: uuid.UUID, attempt: str, *, index: int) -> None:
    """``aggregate_shard(*, round_id, index)``: partial sums of one shard."""
    aggregation.aggregate_shard(rt, round_id, int(index), attempt=attempt)


@round_step(COMBINE_ROUND)
def combine_round(rt: Runtime, round_id: uuid.UUID, attempt: str) -> None:
    """``combine_round(*, round_id)``: merge the partial sums and close the round."""
    aggregation.combine_round(rt, round_id)


@periodic(CHECK_DEADLINES)
def check_deadlines(rt: Runtime) -> None:
    """Apply passed deadlines (enrolment, rounds) and re-queue stalled aggregations."""
    scheduler.run_periodic_check(rt, utcnow())
