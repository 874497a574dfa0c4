"""The steps of a round's aggregation: plan, claim lease, sharded partial sums, combine.

Every aggregating round gets a plan: ``AggregationShard`` rows, one per cell of the grid
*module groups x client groups*. A small round has one cell, aggregated in one step by
``services.aggregation.aggregate_round``. A round whose accepted updates exceed
``shard_threshold_bytes`` is split: each shard task reads only its modules' tensors
(``tensors.load_adapter_part``) of only its clients, folds them into a strategy accumulator
restricted to those modules, and stores ``accumulator.state()`` under ``partial_key``. The
shard that finishes last (decided under the round's row lock) queues the combine step, which
merges the client-group partials of each module group and concatenates the groups' results:
exact, because every strategy aggregates each module (and each shared extra tensor)
independently.

The rows are also the claim lease that makes redelivery safe: a step is claimed by one
delivery (``claimed_by``); a duplicate message finds it claimed and returns, a message
redelivered after its worker died (same task id) or a lease older than the time limit takes it
over, and ``aggregation_max_attempts`` claims fail the round instead of looping forever.
"""

from __future__ import annotations

import functools
import logging
import math
import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from server.aggregation.keys import classify
from server.db.models import AggregationShard, Round, ShardStatus, UpdateStatus
from server.db.models import ClientUpdate as UpdateRow
from server.db.session import after_commit
from server.services.runtime import Runtime

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------- planning
def plan_for(rt: Runtime, total_bytes: int, n_updates: int, n_modules: int) -> tuple[int, int]:
    """(module groups, client groups) for a round: (1, 1) unless its updates are too big."""
    settings = rt.settings
    if total_bytes <= settings.shard_threshold_bytes or n_updates == 0:
        return 1, 1
    groups = max(1, min(settings.shard_modules, n_modules, settings.shard_max))
    clients = math.ceil(total_bytes / (groups * settings.shard_threshold_bytes))
    return groups, max(1, min(clients, n_updates, settings.shard_max // groups))


def ensure_plan(
    session: Session, rt: Runtime, rnd: Round, n_modules: int
) -> list[AggregationShard]:
    """The round's steps, created on first call (call with the round row locked)."""
    shards = shards_of(session, rnd.id)
    if shards:
        return shards
    total, count = session.execute(
        select(func.coalesce(func.sum(UpdateRow.size_bytes), 0), func.count()).where(
            UpdateRow.round_id == rnd.id, UpdateRow.status == UpdateStatus.ACCEPTED
        )
    ).one()
    groups, clients = plan_for(rt, int(total or 0), int(count), n_modules)
    for index in range(groups * clients):
        session.add(
            AggregationShard(
                round_id=rnd.id,
                index=index,
                module_group=index // clients,
                module_groups=groups,
                client_group=index % clients,
                client_groups=clients,
                status=ShardStatus.PENDING,
                attempts=0,
            )
        )
    session.flush()
    if groups * clients > 1:
        log.info(
            "round %s: %d bytes in %d updates -> %d module group(s) x %d client group(s)",
            rnd.id,
            total,
            count,
            groups,
            clients,
        )
    return shards_of(session, rnd.id)


def shards_of(session: Session, round_id: uuid.UUID) -> list[AggregationShard]:
    return list(
        session.scalars(
            select(AggregationShard)
            .where(AggregationShard.round_id == round_id)
            .order_by(AggregationShard.index)
            .execution_options(populate_existing=True)
        )
    )


def module_group_of(modules: Mapping[str, tuple[int, int]], groups: int) -> dict[str, int]:
    """Balance modules over ``groups`` by parameter count (largest first, deterministic)."""
    load = [0] * groups
    assignment: dict[str, int] = {}
    for name in sorted(modules, key=lambda m: (-(modules[m][0] + modules[m][1]), m)):
        group = min(range(groups), key=lambda g: (load[g], g))
        assignment[name] = group
        load[group] += modules[name][0] + modules[name][1]
    return assignment


def owner_of(key: str, assignment: Mapping[str, int]) -> int:
    """The module group that owns a key; shared extra tensors belong to group 0."""
    part, module = classify(key)
    return 0 if part == "extra" else assignment.get(module, 0)


def client_slice(n: int, group: int, groups: int) -> slice:
    """Contiguous, balanced client groups over a round's updates in fold order (CLIENT_ORDER)."""
    return slice(group * n // groups, (group + 1) * n // groups)


# ---------------------------------------------------------------------------------- claiming
CLAIMED, BUSY, DONE, EXHAUSTED = "claimed", "busy", "done", "exhausted"


def claim(
    session: Session, rt: Runtime, shard: AggregationShard, attempt: str, now: datetime
) -> str:
    """Take the step for delivery ``attempt``: CLAIMED, BUSY (another live delivery has it),
    DONE, or EXHAUSTED (too many deliveries died on it). Call with the round row locked."""
    session.refresh(shard, with_for_update=True)
    if shard.status == ShardStatus.DONE:
        return DONE
    lease = timedelta(seconds=rt.settings.aggregation_time_limit_s + 5)
    if (
        shard.status == ShardStatus.RUNNING
        and shard.claimed_by != attempt
        and shard.claimed_at is not None
        and shard.claimed_at > now - lease
    ):
        return BUSY
    if shard.attempts >= rt.settings.aggregation_max_attempts:
        return EXHAUSTED
    shard.status = ShardStatus.RUNNING
    shard.claimed_by = attempt
    shard.claimed_at = now
    shard.attempts += 1
    return CLAIMED


def exhausted_reason(rt: Runtime, shard: AggregationShard) -> str:
    return (
        f"aggregation step {shard.index} was started {shard.attempts} time(s) and its worker "
        f"was lost each time (crash, out-of-memory kill or time limit of "
        f"{rt.settings.aggregation_time_limit_s} s); not retrying"
    )


def finish(
    session: Session,
    shard: AggregationShard,
    now: datetime,
    stats: dict[str, Any],
    storage_key: str | None = None,
) -> None:
    shard.status = ShardStatus.DONE
    shard.finished_at = now
    shard.stats = stats
    shard.storage_key = storage_key


def release_claims(session: Session) -> int:
    """Return every running step to pending (their worker is known dead: a restarted embedded
    coordinator is the only worker of its database). Attempts stay counted."""
    result = session.execute(
        update(AggregationShard)
        .where(AggregationShard.status == ShardStatus.RUNNING)
        .values(status=ShardStatus.PENDING, claimed_by=None)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------- dispatching
def dispatch_steps(
    session: Session,
    rt: Runtime,
    round_id: uuid.UUID,
    shards: list[AggregationShard],
    now: datetime,
) -> None:
    """Queue every unfinished shard of a sharded round, or its combine if all are done."""
    steps = rt.dispatch
    pending = [s for s in shards if s.status != ShardStatus.DONE]
    if not pending:
        after_commit(session, lambda: steps.combine(round_id))
        return
    for shard in pending:
        shard.dispatched_at = now
        after_commit(session, functools.partial(steps.shard, round_id, shard.index))
