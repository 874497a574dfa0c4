"""The aggregation of one round: the task bodies that workers (embedded or Celery) run.

Each is idempotent: it only acts on a round in ``aggregating``, claims its step
(``services.sharding``) so that a duplicate delivery returns at once, writes its output under a
deterministic key, and closes the round with a compare-and-set, so a duplicate, redelivered or
concurrent run does no harm. Updates are streamed one at a time into the strategy's
accumulator: memory is one adapter, whatever the number of clients.

* ``aggregate_round``: the entry step. A small round is aggregated right here; a large one
  (see ``sharding.plan_for``) queues its shard steps.
* ``aggregate_shard``: partial sums of one module group over one client group.
* ``combine_round``: merges the partial sums once every shard is done (the last shard queues it).
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.aggregation import AggregationError
from server.db.models import (
    CLIENT_ORDER,
    AggregationShard,
    Client,
    GlobalAdapter,
    Job,
    Round,
    RoundStatus,
    ShardStatus,
    UpdateStatus,
    utcnow,
)
from server.db.models import ClientUpdate as UpdateRow
from server.db.session import after_commit, session_scope
from server.errors import NotFound
from server.services import folding, rounds, sharding
from server.services.adapters import starting_adapter
from server.services.folding import Work
from server.services.runtime import Runtime
from server.services.strategies import spec_of
from server.storage import partial_key

log = logging.getLogger(__name__)

# Bad data or a bad spec, not a bad worker: the round fails with the reason, never retried.
FAILURES = (AggregationError, NotFound, OSError, ValueError)


def aggregate_round(rt: Runtime, round_id: uuid.UUID, *, attempt: str | None = None) -> None:
    """Aggregate round ``round_id`` if it is still aggregating; otherwise return at once.

    ``attempt`` identifies the delivery (the Celery task id, identical on redelivery).
    """
    attempt = attempt or uuid.uuid4().hex
    now = utcnow()
    with session_scope(rt.sessions) as session:
        rnd = _aggregating(session, round_id)
        if rnd is None:
            return
        job = session.get_one(Job, rnd.job_id)
        shards = sharding.ensure_plan(session, rt, rnd, len(spec_of(job).modules))
        if len(shards) > 1:
            sharding.dispatch_steps(session, rt, round_id, shards, now)
            return
        if not _claimed(session, rt, rnd, shards[0], attempt, now):
            return
        work = _load_work(session, rnd, job)
    try:
        adapter, stats = folding.compute_round(rt, work)
    except FAILURES as exc:
        _fail(rt, round_id, exc)
        return
    with session_scope(rt.sessions) as session:
        if not _close(session, rt, round_id, adapter, stats):
            return
        shard = session.get_one(AggregationShard, (round_id, 0))
        sharding.finish(session, shard, utcnow(), _step_stats(stats))


def aggregate_shard(
    rt: Runtime, round_id: uuid.UUID, index: int, *, attempt: str | None = None
) -> None:
    """Store the partial sums of shard ``index``; the last shard to finish queues the combine."""
    attempt = attempt or uuid.uuid4().hex
    now = utcnow()
    with session_scope(rt.sessions) as session:
        rnd = _aggregating(session, round_id)
        shard = session.get(AggregationShard, (round_id, index)) if rnd else None
        if rnd is None or shard is None:
            return
        if not _claimed(session, rt, rnd, shard, attempt, now):
            _combine_when_complete(session, rt, round_id)  # a lost "last shard" message
            return
        job = session.get_one(Job, rnd.job_id)
        work = _load_work(session, rnd, job)
        cell = (shard.module_group, shard.module_groups, shard.client_group, shard.client_groups)
    try:
        blob, stats = folding.compute_partial(rt, work, *cell)
        key = partial_key(work.job.id, work.number, index)
        rt.store.put_bytes(key, blob)
    except FAILURES as exc:
        _fail(rt, round_id, exc)
        return
    with session_scope(rt.sessions) as session:
        session.get(Round, round_id, with_for_update=True)  # serialises "am I the last one?"
        shard = session.get_one(AggregationShard, (round_id, index), populate_existing=True)
        sharding.finish(session, shard, utcnow(), stats, key)
        _combine_when_complete(session, rt, round_id)


def combine_round(rt: Runtime, round_id: uuid.UUID) -> None:
    """Merge the shards' partial sums into the global adapter and close the round."""
    with session_scope(rt.sessions) as session:
        rnd = _aggregating(session, round_id)
        if rnd is None:
            return
        shards = sharding.shards_of(session, round_id)
        if not shards or any(s.status != ShardStatus.DONE for s in shards):
            log.info("round %s: shards not all done; the last one queues the combine", round_id)
            return
        work = _load_work(session, rnd, session.get_one(Job, rnd.job_id))
        partials = [(s.module_group, s.module_groups, s.storage_key or "") for s in shards]
        shard_stats = [s.stats or {} for s in shards]
    try:
        adapter, stats = folding.combine_partials(rt, work, partials, shard_stats)
    except FAILURES as exc:
        _fail(rt, round_id, exc)
        return
    with session_scope(rt.sessions) as session:
        if not _close(session, rt, round_id, adapter, stats):
            return
        after_commit(session, lambda: _delete([key for _, _, key in partials], rt))


# ---------------------------------------------------------------------------------- helpers
def _close(
    session: Session,
    rt: Runtime,
    round_id: uuid.UUID,
    adapter: GlobalAdapter,
    stats: dict[str, object],
) -> bool:
    """Close the round with its adapter; False if another worker already closed it."""
    adapter.round_id = round_id
    if rounds.close_round(session, rt, round_id, adapter, stats, utcnow()):
        return True
    log.info("round %s was closed by another worker", round_id)
    return False


def _delete(keys: list[str], rt: Runtime) -> None:
    for key in keys:  # partial sums are worthless once the round is closed
        rt.store.delete(key)


def _aggregating(session: Session, round_id: uuid.UUID) -> Round | None:
    # The row lock serialises the entry, shard and combine steps of one round (on Postgres;
    # SQLite transactions are serialised anyway by BEGIN IMMEDIATE).
    rnd = session.get(Round, round_id, with_for_update=True, populate_existing=True)
    if rnd is None or rnd.status != RoundStatus.AGGREGATING:
        log.info("round %s is not aggregating (%s): nothing to do", round_id, rnd and rnd.status)
        return None
    return rnd


def _claimed(
    session: Session, rt: Runtime, rnd: Round, shard: AggregationShard, attempt: str, now: datetime
) -> bool:
    outcome = sharding.claim(session, rt, shard, attempt, now)
    if outcome == sharding.EXHAUSTED:
        rounds.fail_round(session, rt, rnd.id, sharding.exhausted_reason(rt, shard), utcnow())
        log.error("round %s: %s", rnd.id, sharding.exhausted_reason(rt, shard))
    elif outcome != sharding.CLAIMED:
        log.info("round %s step %d is %s: nothing to do", rnd.id, shard.index, outcome)
    return outcome == sharding.CLAIMED


def _combine_when_complete(session: Session, rt: Runtime, round_id: uuid.UUID) -> None:
    steps = rt.dispatch
    if all(s.status == ShardStatus.DONE for s in sharding.shards_of(session, round_id)):
        after_commit(session, lambda: steps.combine(round_id))


def _load_work(session: Session, rnd: Round, job: Job) -> Work:
    # Folded in CLIENT_ORDER, never in arrival or id order: float sums depend on their order,
    # and the same run must give the same adapter bytes (and shards the same client groups).
    rows = session.execute(
        select(UpdateRow.client_id, UpdateRow.storage_key, UpdateRow.n_samples, UpdateRow.rank)
        .join(Client, Client.id == UpdateRow.client_id)
        .where(UpdateRow.round_id == rnd.id, UpdateRow.status == UpdateStatus.ACCEPTED)
        .order_by(*CLIENT_ORDER)
    ).all()
    return Work(
        job=job,
        number=rnd.number,
        previous_key=starting_adapter(session, rnd.job_id, rnd.number).storage_key,
        updates=[(c, k or "", n or 0, r) for c, k, n, r in rows],
    )


def _fail(rt: Runtime, round_id: uuid.UUID, exc: Exception) -> None:
    reason = f"aggregation failed: {exc}"
    with session_scope(rt.sessions) as session:
        rounds.fail_round(session, rt, round_id, reason, utcnow())
    log.error("round %s: %s", round_id, reason)


def _step_stats(stats: dict[str, object]) -> dict[str, object]:
    return {k: stats[k] for k in ("seconds", "read_seconds", "bytes_in", "updates")}
