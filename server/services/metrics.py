"""Monitoring read models: per-round metrics, a job summary, client activity, progress events.

Everything here is derived from the tables on request; nothing is stored. Work is bounded
by the page asked for (rounds or clients), so a 200-round, 1,000-client job stays cheap.
"""

from __future__ import annotations

import math
import uuid
from collections import Counter, defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from server.db.models import (
    Client,
    ClientUpdate,
    GlobalAdapter,
    Job,
    JobStatus,
    Round,
    UpdateStatus,
    utcnow,
)
from server.db.paging import page
from server.errors import NotFound
from server.schemas.api import UpdateOut
from server.schemas.metrics import (
    ClientActivity,
    ClientState,
    JobEvent,
    JobSummary,
    MetricStats,
    RankBin,
    RoundMetrics,
)
from server.services import queries
from server.services.jobs import get_job
from server.services.strategies import extra_of, modules_of, spec_of, strategy_for

FLOAT32_BYTES = 4
# What a client's latest sampled update says about it.
STATE_OF_UPDATE: dict[str, ClientState] = {
    UpdateStatus.PENDING: "training",
    UpdateStatus.ACCEPTED: "active",
    UpdateStatus.MISSED: "straggling",
}


def _stats(values: Sequence[float]) -> MetricStats:
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / len(values)
    return MetricStats(
        n=len(values), mean=mean, std=math.sqrt(var), min=min(values), max=max(values)
    )


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    return None if start is None or end is None else (end - start).total_seconds()


def download_bytes(job: Job, rank: int) -> int:
    """Float32 payload a client of ``rank`` downloads: the parts it receives, plus extras."""
    strategy = strategy_for(job)
    spec = spec_of(job)
    numel = 0
    for d_in, d_out in modules_of(spec).values():
        for part in strategy.received_parts:
            numel += {"lora_A": rank * d_in, "lora_B": d_out * rank, "vera_lambda_d": rank}.get(
                part, d_out
            )
    if strategy.shares_extra:
        numel += sum(math.prod(shape) for shape in extra_of(spec).values())
    return numel * FLOAT32_BYTES


def round_metrics(
    session: Session, job_id: uuid.UUID, *, limit: int, offset: int
) -> tuple[list[RoundMetrics], int]:
    """A page of rounds (by number) with participation, client metrics, bytes and timings."""
    job = get_job(session, job_id)
    rounds, total = queries.rounds_page(session, job_id, limit=limit, offset=offset)
    ids = [r.id for r in rounds]
    rows = (
        session.execute(
            select(
                ClientUpdate.round_id,
                ClientUpdate.status,
                ClientUpdate.rank,
                ClientUpdate.size_bytes,
                ClientUpdate.rejections,
                ClientUpdate.metrics,
            ).where(ClientUpdate.round_id.in_(ids))
        ).all()
        if ids
        else []
    )
    adapters = {
        a.round_id: a.size_bytes
        for a in session.scalars(select(GlobalAdapter).where(GlobalAdapter.round_id.in_(ids)))
    }
    by_round: dict[uuid.UUID, list[Any]] = defaultdict(list)
    for row in rows:
        by_round[row.round_id].append(row)
    down_by_rank: dict[int, int] = {}
    now = utcnow()
    out = []
    for rnd in rounds:
        updates = by_round.get(rnd.id, [])
        statuses = Counter(u.status for u in updates)
        values: dict[str, list[float]] = defaultdict(list)
        bytes_up = bytes_down = 0
        for u in updates:
            if u.rank not in down_by_rank:
                down_by_rank[u.rank] = download_bytes(job, u.rank)
            bytes_down += down_by_rank[u.rank]
            if u.status != UpdateStatus.ACCEPTED:
                continue
            bytes_up += u.size_bytes or 0
            for name, value in (u.metrics or {}).items():
                if isinstance(value, int | float) and math.isfinite(value):
                    values[name].append(float(value))
        aggregation = rnd.aggregation or {}
        out.append(
            RoundMetrics(
                number=rnd.number,
                status=rnd.status,
                sampled=rnd.sampled,
                quorum=rnd.quorum,
                participants=len(updates),
                accepted=statuses[UpdateStatus.ACCEPTED],
                stragglers=statuses[UpdateStatus.MISSED],
                pending=statuses[UpdateStatus.PENDING],
                rejected_uploads=sum(u.rejections for u in updates),
                rejected_clients=sum(u.rejections > 0 for u in updates),
                opened_at=rnd.opened_at,
                aggregating_at=rnd.aggregating_at,
                closed_at=rnd.closed_at,
                open_seconds=_seconds(rnd.opened_at, rnd.aggregating_at or rnd.closed_at or now),
                aggregating_seconds=_seconds(rnd.aggregating_at, rnd.closed_at),
                metrics={name: _stats(v) for name, v in sorted(values.items())},
                bytes_up=bytes_up,
                bytes_down_estimate=bytes_down,
                global_adapter_bytes=adapters.get(rnd.id),
                coverage=aggregation.get("coverage"),
            )
        )
    return out, total


def _latest_states(
    session: Session, job_id: uuid.UUID, client_ids: Sequence[uuid.UUID] | None = None
) -> Any:
    """Rows (client_id, status, number) of each client's update in its latest sampled round."""
    latest = select(ClientUpdate.client_id, func.max(Round.number).label("number")).join(
        Round, ClientUpdate.round_id == Round.id
    )
    latest = latest.where(Round.job_id == job_id)
    if client_ids is not None:
        latest = latest.where(ClientUpdate.client_id.in_(client_ids))
    sub = latest.group_by(ClientUpdate.client_id).subquery()
    return (
        select(ClientUpdate.client_id, ClientUpdate.status, Round.number)
        .join(Round, ClientUpdate.round_id == Round.id)
        .join(sub, and_(sub.c.client_id == ClientUpdate.client_id, sub.c.number == Round.number))
        .where(Round.job_id == job_id)
    )


def client_states(session: Session, job_id: uuid.UUID, clients: int) -> dict[ClientState, int]:
    """How many of the job's ``clients`` are in each state (``client_activity`` says which)."""
    latest = _latest_states(session, job_id).subquery()
    by_status: dict[str, int] = dict(
        session.execute(select(latest.c.status, func.count()).group_by(latest.c.status)).all()
    )
    states: dict[ClientState, int] = {"enrolled": 0, "training": 0, "active": 0, "straggling": 0}
    for status, n in by_status.items():
        states[STATE_OF_UPDATE[status]] += n
    states["enrolled"] = clients - sum(by_status.values())
    return states


def job_summary(session: Session, job_id: uuid.UUID) -> JobSummary:
    """Client counts by state and by rank, and AutoRank's CRITIC weights."""
    job = get_job(session, job_id)
    ranks = session.execute(
        select(Client.rank, func.count())
        .where(Client.job_id == job_id)
        .group_by(Client.rank)
        .order_by(Client.rank)
    ).all()
    clients = sum(n for _, n in ranks)
    states = client_states(session, job_id, clients)
    autorank = job.autorank or {}
    result = autorank.get("result") or {}
    return JobSummary(
        clients=clients,
        client_states=states,
        rank_histogram=[RankBin(rank=r, clients=n) for r, n in ranks],
        autorank_policy=autorank.get("policy"),
        criteria=list(autorank.get("criteria") or []),
        critic_weights=result.get("weights"),
        dropped_criteria=list(result.get("dropped") or []),
        autorank_reference=result.get("reference", "cohort") if result else None,
        rank_budget=result.get("budget"),
    )


def client_activity(
    session: Session, job_id: uuid.UUID, *, limit: int, offset: int
) -> tuple[list[ClientActivity], int]:
    """A page of clients (as ``/clients`` lists them) with their state and missed rounds."""
    clients, total = queries.list_clients(session, job_id, limit=limit, offset=offset)
    ids = [c.id for c in clients]
    latest = {row.client_id: row for row in session.execute(_latest_states(session, job_id, ids))}
    missed = dict(
        session.execute(
            select(ClientUpdate.client_id, func.count())
            .where(ClientUpdate.client_id.in_(ids), ClientUpdate.status == UpdateStatus.MISSED)
            .group_by(ClientUpdate.client_id)
        ).all()
    )
    out = []
    for client in clients:
        row = latest.get(client.id)
        out.append(
            ClientActivity(
                **client.model_dump(),
                state=STATE_OF_UPDATE[row.status] if row else "enrolled",
                rounds_missed=missed.get(client.id, 0),
                last_round=row.number if row else None,
            )
        )
    return out, total


def round_updates(
    session: Session,
    job_id: uuid.UUID,
    number: int,
    *,
    status: UpdateStatus | None,
    limit: int,
    offset: int,
) -> tuple[list[UpdateOut], int]:
    """A page of one round's updates (accepted, pending or missed), in assignment order."""
    get_job(session, job_id)
    round_id = session.scalar(
        select(Round.id).where(Round.job_id == job_id, Round.number == number)
    )
    if round_id is None:
        raise NotFound(f"job {job_id} has no round {number}")
    where = [ClientUpdate.round_id == round_id]
    if status is not None:
        where.append(ClientUpdate.status == status)
    updates, total = page(
        session,
        select(ClientUpdate).where(*where),
        ClientUpdate.assigned_at,
        ClientUpdate.id,
        limit=limit,
        offset=offset,
    )
    return [UpdateOut.model_validate(u) for u in updates], total


def job_event(session: Session, job_id: uuid.UUID) -> JobEvent:
    """The job's progress now: compared between polls to decide whether to notify."""
    job = get_job(session, job_id)
    rnd = session.scalar(
        select(Round).where(Round.job_id == job_id, Round.number == job.current_round)
    )
    accepted = 0
    if rnd is not None:
        accepted = (
            session.scalar(
                select(func.count())
                .select_from(ClientUpdate)
                .where(
                    ClientUpdate.round_id == rnd.id, ClientUpdate.status == UpdateStatus.ACCEPTED
                )
            )
            or 0
        )
    return JobEvent(
        status=job.status,
        current_round=job.current_round,
        total_rounds=job.total_rounds,
        updated_at=job.updated_at,
        round_status=rnd.status if rnd is not None else None,
        accepted=accepted,
        ended=JobStatus(job.status).ended,
    )
