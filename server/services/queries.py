"""Read models for the API and the dashboard: pages of jobs, rounds and clients."""

from __future__ import annotations

import uuid

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from server.db.models import Client, ClientUpdate, GlobalAdapter, Round, UpdateStatus
from server.db.paging import page
from server.errors import NotFound
from server.schemas.api import ClientOut, GlobalAdapterOut, RoundDetail, RoundOut, UpdateOut
from server.services.jobs import get_job


def _accepted_by_round(session: Session, round_ids: list[uuid.UUID]) -> dict[uuid.UUID, int]:
    if not round_ids:
        return {}
    rows = session.execute(
        select(ClientUpdate.round_id, func.count())
        .where(ClientUpdate.round_id.in_(round_ids), ClientUpdate.status == UpdateStatus.ACCEPTED)
        .group_by(ClientUpdate.round_id)
    )
    return dict(rows.all())


def _adapters_by_round(
    session: Session, round_ids: list[uuid.UUID]
) -> dict[uuid.UUID, GlobalAdapter]:
    if not round_ids:
        return {}
    adapters = session.scalars(select(GlobalAdapter).where(GlobalAdapter.round_id.in_(round_ids)))
    return {a.round_id: a for a in adapters}


def _round_out(rnd: Round, accepted: int, adapter: GlobalAdapter | None) -> RoundOut:
    out = RoundOut.model_validate(rnd)
    out.accepted = accepted
    out.global_adapter = GlobalAdapterOut.model_validate(adapter) if adapter else None
    return out


def rounds_page(
    session: Session, job_id: uuid.UUID, *, limit: int, offset: int
) -> tuple[list[Round], int]:
    """A page of the job's rounds by number, and how many it has in all."""
    query = select(Round).where(Round.job_id == job_id)
    return page(session, query, Round.number, limit=limit, offset=offset)


def list_rounds(
    session: Session, job_id: uuid.UUID, *, limit: int, offset: int
) -> tuple[list[RoundOut], int]:
    get_job(session, job_id)
    rounds, total = rounds_page(session, job_id, limit=limit, offset=offset)
    ids = [r.id for r in rounds]
    accepted = _accepted_by_round(session, ids)
    adapters = _adapters_by_round(session, ids)
    return [_round_out(r, accepted.get(r.id, 0), adapters.get(r.id)) for r in rounds], total


def round_detail(session: Session, job_id: uuid.UUID, number: int) -> RoundDetail:
    get_job(session, job_id)
    rnd = session.scalar(select(Round).where(Round.job_id == job_id, Round.number == number))
    if rnd is None:
        raise NotFound(f"job {job_id} has no round {number}")
    updates = list(
        session.scalars(
            select(ClientUpdate)
            .where(ClientUpdate.round_id == rnd.id)
            .order_by(ClientUpdate.assigned_at, ClientUpdate.id)
        )
    )
    base = _round_out(
        rnd,
        sum(u.status == UpdateStatus.ACCEPTED for u in updates),
        _adapters_by_round(session, [rnd.id]).get(rnd.id),
    )
    return RoundDetail(**base.model_dump(), updates=[UpdateOut.model_validate(u) for u in updates])


def list_clients(
    session: Session, job_id: uuid.UUID, *, limit: int, offset: int
) -> tuple[list[ClientOut], int]:
    get_job(session, job_id)
    query = select(Client).where(Client.job_id == job_id)
    clients, total = page(session, query, Client.enrolled_at, Client.id, limit=limit, offset=offset)
    contributed = dict(
        session.execute(
            select(ClientUpdate.client_id, func.count())
            .where(
                ClientUpdate.client_id.in_([c.id for c in clients]),
                ClientUpdate.status == UpdateStatus.ACCEPTED,
            )
            .group_by(ClientUpdate.client_id)
        ).all()
    )
    out = []
    for client in clients:
        item = ClientOut.model_validate(client)
        item.rounds_contributed = contributed.get(client.id, 0)
        out.append(item)
    return out, total
