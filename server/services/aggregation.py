"""The aggregation of one round: the task body that workers (embedded or Celery) run.

It is idempotent: it only acts on a round in ``aggregating``, writes the global
adapter under a deterministic key, and closes the round with a compare-and-set, so a
duplicate or redelivered run does no harm. Updates are streamed one at a time into the
strategy's accumulator: memory is one adapter, whatever the number of clients.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from dataclasses import dataclass

from safetensors import SafetensorError
from sqlalchemy import select

from server.aggregation import AggregationError, ClientUpdate
from server.db.models import ClientUpdate as UpdateRow
from server.db.models import GlobalAdapter, Job, Round, RoundStatus, UpdateStatus, utcnow
from server.db.session import session_scope
from server.errors import NotFound
from server.services import rounds
from server.services.adapters import starting_adapter
from server.services.runtime import Runtime
from server.services.strategies import client_scale, strategy_for
from server.storage import global_key
from server.tensors import load_adapter, save_adapter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Work:
    job: Job
    number: int
    previous_key: str
    updates: list[tuple[uuid.UUID, str, int, int]]  # client id, key, n_samples, rank


def aggregate_round(rt: Runtime, round_id: uuid.UUID) -> None:
    """Aggregate round ``round_id`` if it is still aggregating; otherwise return at once."""
    with session_scope(rt.sessions) as session:
        rnd = session.get(Round, round_id)
        if rnd is None or rnd.status != RoundStatus.AGGREGATING:
            log.info(
                "round %s is not aggregating (%s): nothing to do", round_id, rnd and rnd.status
            )
            return
        rows = session.execute(
            select(UpdateRow.client_id, UpdateRow.storage_key, UpdateRow.n_samples, UpdateRow.rank)
            .where(UpdateRow.round_id == round_id, UpdateRow.status == UpdateStatus.ACCEPTED)
            .order_by(UpdateRow.client_id)
        ).all()
        work = _Work(
            job=session.get_one(Job, rnd.job_id),
            number=rnd.number,
            previous_key=starting_adapter(session, rnd.job_id, rnd.number).storage_key,
            updates=[(c, k, n, r) for c, k, n, r in rows],
        )
    try:
        adapter, stats = _compute(rt, work)
    except (AggregationError, SafetensorError, NotFound, OSError, ValueError) as exc:
        reason = f"aggregation failed: {exc}"
        with session_scope(rt.sessions) as session:
            rounds.fail_round(session, round_id, reason, utcnow())
        log.error("round %s: %s", round_id, reason)
        return
    with session_scope(rt.sessions) as session:
        adapter.round_id = round_id
        if not rounds.close_round(session, round_id, adapter, stats, utcnow()):
            log.info("round %s was closed by another worker", round_id)


def _compute(rt: Runtime, work: _Work) -> tuple[GlobalAdapter, dict[str, object]]:
    started = time.perf_counter()
    strategy = strategy_for(work.job)
    with rt.store.local_path(work.previous_key) as path:
        previous = load_adapter(path)
    accumulator = strategy.accumulator(previous)
    read_s = 0.0
    bytes_in = 0
    for client_id, key, n_samples, rank in work.updates:
        t0 = time.perf_counter()
        with rt.store.local_path(key) as path:
            bytes_in += path.stat().st_size
            tensors = load_adapter(path)
        read_s += time.perf_counter() - t0
        accumulator.add(
            ClientUpdate(
                tensors=tensors,
                num_samples=n_samples,
                scale=client_scale(work.job, rank),
                client_id=str(client_id),
            ),
            # Every value was checked finite when the upload was accepted.
            check_finite=False,
        )
    result = accumulator.result()
    blob = save_adapter(result, {"job": str(work.job.id), "round": str(work.number)})
    key = global_key(work.job.id, work.number)
    rt.store.put_bytes(key, blob)
    total_s = time.perf_counter() - started
    adapter = GlobalAdapter(
        storage_key=key,
        sha256=hashlib.sha256(blob).hexdigest(),
        size_bytes=len(blob),
        rank=work.job.r_max,
        n_updates=accumulator.num_updates,
        total_samples=accumulator.total_samples,
    )
    stats: dict[str, object] = {
        "seconds": round(total_s, 6),
        "read_seconds": round(read_s, 6),
        "bytes_in": bytes_in,
        "bytes_out": len(blob),
        "updates": accumulator.num_updates,
        "coverage": [float(c) for c in accumulator.coverage()],
    }
    return adapter, stats
