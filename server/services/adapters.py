"""Global adapters: what a client downloads for its round, and what an operator downloads."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.aggregation.keys import part_of
from server.db.models import Client, GlobalAdapter, Job, Round, RoundStatus
from server.errors import Conflict, NotFound
from server.services.client_tasks import client_round
from server.services.job_definitions import JobDefinition, job_definition
from server.services.known_clients import ClientRef
from server.services.runtime import Runtime
from server.services.small_cuts import small_cut
from server.services.strategies import client_scale, spec_of, strategy_for
from server.storage import distributed_key
from server.tensors import load_adapter, save_adapter


def starting_adapter(session: Session, job_id: uuid.UUID, round_number: int) -> GlobalAdapter:
    """The global adapter round ``round_number`` starts from (the one round n-1 produced)."""
    adapter = session.scalar(
        select(GlobalAdapter)
        .join(Round, GlobalAdapter.round_id == Round.id)
        .where(Round.job_id == job_id, Round.number == round_number - 1)
    )
    if adapter is None:
        raise NotFound(f"round {round_number - 1} of job {job_id} has no global adapter")
    return adapter


def client_adapter_key(
    session: Session, rt: Runtime, client: ClientRef, round_id: uuid.UUID
) -> str:
    """Storage key of the adapter ``client`` trains from in this round, cut to its rank.

    Distributions are cached under a deterministic key per (round, rank, scale): the
    first client of each rank pays for the slicing (and the read of the round's starting
    adapter), every other one streams a file. The rest is one read for a sampled client: the
    round and its update there (``client_tasks.client_round``); the job's definition is kept
    in memory (``job_definitions``).
    """
    rnd = client_round(session, client, round_id)
    if rnd.number == 0:
        raise Conflict("round 0 holds the initial adapter and trains nobody")
    # Its rank in the round when sampled, else its assigned one (read only then).
    rank = rnd.update.rank if rnd.update is not None else _assigned_rank(session, client.id)
    if rank is None:
        raise Conflict("this client has no rank yet: enrolment is still open")
    job = job_definition(session, rnd.job_id)
    return _distributed(
        rt, job, rnd.number - 1, rank, lambda: starting_adapter(session, job.id, rnd.number)
    )


def small_starting_adapter(
    session: Session, rt: Runtime, job_id: uuid.UUID, round_number: int, rank: int
) -> bytes | None:
    """The adapter round ``round_number`` starts from, cut to ``rank``, if it is at most
    ``FLAAS_INLINE_ADAPTER_MAX_BYTES`` (what a train answer carries); None otherwise.

    Made once per process and kept in memory (``services.small_cuts``): a small cut is not
    written to the store (a download of it, rare, writes it then); a large one is, for the
    downloads its clients will make."""
    limit = rt.settings.inline_adapter_max_bytes
    if limit == 0:
        return None
    job = job_definition(session, job_id)
    number = round_number - 1
    key = _cut_key(job, number, rank)

    def make() -> bytes | None:
        if rt.store.exists(key):
            return rt.store.get_bytes(key) if rt.store.size(key) <= limit else None
        data = _cut(rt, job, number, rank, lambda: starting_adapter(session, job_id, round_number))
        if len(data) <= limit:
            return data
        rt.store.put_bytes(key, data)
        return None

    data = small_cut(key, make)
    return data if data is not None and len(data) <= limit else None  # the limit may change


def _assigned_rank(session: Session, client_id: uuid.UUID) -> int | None:
    return session.scalar(select(Client.rank).where(Client.id == client_id))


def latest_client_adapter_key(session: Session, rt: Runtime, client: Client) -> str:
    """Storage key of the newest global adapter cut to ``client``'s rank: what the device
    combines with its private tensors to export its personalised adapter."""
    if client.rank is None:
        raise Conflict("this client has no rank yet: enrolment is still open")
    source = operator_adapter(session, client.job_id, None)
    number = session.get_one(Round, source.round_id).number
    job = job_definition(session, client.job_id)
    return _distributed(rt, job, number, client.rank, lambda: source)


def _distributed(
    rt: Runtime,
    job: JobDefinition,
    number: int,
    rank: int,
    source: Callable[[], GlobalAdapter],
) -> str:
    """Storage key of round ``number``'s global adapter as a client of ``rank`` receives it,
    cut (:func:`_cut`) and stored on first use under a deterministic key per (round, rank,
    scale)."""
    key = _cut_key(job, number, rank)
    if not rt.store.exists(key):
        rt.store.put_bytes(key, _cut(rt, job, number, rank, source))
    return key


def _cut_key(job: JobDefinition, number: int, rank: int) -> str:
    """Where round ``number``'s global adapter cut to ``rank`` is kept (store and memory)."""
    return distributed_key(job.id, number, rank, client_scale(job, rank))


def _cut(
    rt: Runtime,
    job: JobDefinition,
    number: int,
    rank: int,
    source: Callable[[], GlobalAdapter],
) -> bytes:
    """Round ``number``'s global adapter (``source``) cut to ``rank`` at its scale, as
    safetensors bytes."""
    with rt.store.local_path(source().storage_key) as path:
        global_tensors = load_adapter(path)
    tensors = strategy_for(job).distribute(global_tensors, rank, client_scale(job, rank))
    if number == 0 and spec_of(job).model is not None:
        # The round-0 extras are a seeded draw that only gives the adapter its layout. A
        # job's model gives every device the same saved modules itself (pretrained weights,
        # a new head drawn from the trainer's fixed seed): sending the draw would replace,
        # say, a pretrained lm_head in modules_to_save by random values.
        tensors = {k: v for k, v in tensors.items() if part_of(k) != "extra"}
    return save_adapter(tensors)


def operator_adapter(
    session: Session, job_id: uuid.UUID, round_number: int | None
) -> GlobalAdapter:
    """The global adapter a round produced (default: the newest one)."""
    query = (
        select(GlobalAdapter)
        .join(Round, GlobalAdapter.round_id == Round.id)
        .where(Round.job_id == job_id, Round.status == RoundStatus.CLOSED)
    )
    if round_number is not None:
        query = query.where(Round.number == round_number)
    adapter = session.scalar(query.order_by(Round.number.desc()).limit(1))
    if adapter is None:
        if session.get(Job, job_id) is None:
            raise NotFound(f"job {job_id} does not exist")
        which = f"round {round_number}" if round_number is not None else "any round"
        raise NotFound(f"job {job_id} has no global adapter for {which} yet")
    return adapter
