"""Enrolment: a client joins a job with its join token and gets its own credential."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy import and_, bindparam, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from client_sdk.state import draw_credential
from server.db.models import Client, Job, JobStatus, utcnow
from server.errors import Conflict, Gone, InvalidRequest, Unauthorized
from server.schemas.api import EnrolRequest, JobModel, JoinFacts
from server.security import hash_secret, matches_any
from server.services import ranking, rounds
from server.services.known_clients import ClientRef
from server.services.models import check_same_model
from server.services.runtime import Runtime
from server.services.strategies import exchanged_parts, spec_of, strategy_for


def enrol_client(
    session: Session, rt: Runtime, job_id: uuid.UUID, join_token: str, request: EnrolRequest
) -> tuple[Client, str, bool]:
    """Enrol a client; returns it, its credential (shown once, stored hashed) and whether it
    is new: a request with the credential of a client already enrolled in this job under the
    same name is that enrolment again (its answer was lost), and gets that client back.

    Enrolment that reaches the job's target size starts the job in the same transaction.
    """
    job = job_for_join_token(session, job_id, join_token, lock=True)
    enrolled_before, name_taken = _identities(session, job, request)
    if enrolled_before is not None and request.credential is not None:
        if enrolled_before.job_id != job.id or enrolled_before.name != request.name:
            raise Conflict("this credential belongs to another enrolment; draw a new one")
        return enrolled_before, request.credential, False
    spec = spec_of(job)
    if JobStatus(job.status).ended:
        raise Gone(f"job {job.id} is {job.status}; it accepts no more clients")
    if job.status == JobStatus.RUNNING and not spec.enrolment.allow_late_join:
        raise Gone(f"job {job.id} has started and does not accept late joiners")
    check_same_model(spec, request.model_sha256)
    if name_taken:
        raise Conflict(
            f"job {job.id} already has a client named {request.name!r}; choose another name, "
            "or resume the enrolled device from its state directory instead of enrolling it again"
        )
    enrolled = (
        session.scalar(select(func.count()).select_from(Client).where(Client.job_id == job.id)) or 0
    )
    if enrolled >= rt.settings.max_clients_per_job:
        raise Conflict(
            f"job {job.id} already has {enrolled} clients, the limit of this coordinator"
        )
    if (
        strategy_for(job).equal_ranks
        and request.max_rank is not None
        and request.max_rank < spec.rank.default
    ):
        raise InvalidRequest(
            f"strategy {job.strategy} trains every client at rank {spec.rank.default}; "
            f"this device's max_rank {request.max_rank} is below it"
        )
    credential = request.credential or draw_credential()
    now = utcnow()
    client = Client(
        job_id=job.id,
        name=request.name,
        credential_hash=hash_secret(credential),
        stats=request.stats.model_dump(),
        max_rank=request.max_rank,
        enrolled_at=now,
        last_seen_at=now,
    )
    session.add(client)
    try:
        session.flush()
    except IntegrityError:  # the same drawn credential, enrolling in another job meanwhile
        raise Conflict("this credential belongs to another enrolment; draw a new one") from None
    if job.status == JobStatus.RUNNING:
        ranking.rank_late_joiner(job, spec, client)
    elif (
        spec.enrolment.target_clients is not None and enrolled + 1 >= spec.enrolment.target_clients
    ):
        rounds.start_job(session, rt, job, now)
    return client, credential, True


def _identities(session: Session, job: Job, request: EnrolRequest) -> tuple[Client | None, bool]:
    """(the client the request's credential enrolled, whether its name is taken in the job),
    in one read. A name is a client's identity in its job (its training seed, its place in
    sampling and aggregation order: docs/algorithms.md, "Reproducibility"), so two clients
    cannot share one; the job row is locked, so two enrolments with one name (or one
    credential) in a job cannot both pass."""
    credential_hash = hash_secret(request.credential) if request.credential is not None else None
    conditions = [Client.credential_hash == credential_hash] if credential_hash else []
    if request.name is not None:
        conditions.append(and_(Client.job_id == job.id, Client.name == request.name))
    if not conditions:
        return None, False
    found = session.scalars(select(Client).where(or_(*conditions))).all()
    enrolled_before = next((c for c in found if c.credential_hash == credential_hash), None)
    name_taken = any(c.job_id == job.id and c.name == request.name for c in found)
    return enrolled_before, name_taken


def job_for_join_token(
    session: Session, job_id: uuid.UUID, join_token: str, *, lock: bool = False
) -> Job:
    """The job ``join_token`` opens (locked for update when ``lock``); 401 otherwise."""
    job = session.get(Job, job_id, with_for_update=lock)
    if job is None or not matches_any(hash_secret(join_token), [job.join_token_hash]):
        # Same answer for an unknown job and a wrong token: a join token is the only
        # thing that proves a client may see a job at all.
        raise Unauthorized("invalid join token for this job")
    return job


def job_model(session: Session, job_id: uuid.UUID, join_token: str) -> JobModel:
    """What a device needs to load and check its model before it enrols."""
    job = job_for_join_token(session, job_id, join_token)
    spec = spec_of(job)
    return JobModel(
        job_id=job.id,
        name=job.name,
        strategy=job.strategy,
        model=spec.model,
        training=spec.training,
    )


def join_facts(session: Session, job_id: uuid.UUID, join_token: str) -> JoinFacts:
    """What a person is told before a device of theirs joins: the job, its rounds, and what
    leaves the device each round (the same parts for every rank)."""
    job = job_for_join_token(session, job_id, join_token)
    spec = spec_of(job)
    shared, private = exchanged_parts(job, job.r_min)
    return JoinFacts(
        job_id=job.id,
        name=job.name,
        status=job.status,
        strategy=job.strategy,
        model=spec.model,
        total_rounds=job.total_rounds,
        current_round=job.current_round,
        r_min=job.r_min,
        r_max=job.r_max,
        shared_parts=shared,
        private_parts=private,
        extra_tensors=sorted(spec.extra),
    )


_BY_CREDENTIAL = select(Client).where(Client.credential_hash == bindparam("credential_hash"))


def authenticate_client(session: Session, credential: str) -> Client:
    """The client holding ``credential`` (a read: ``mark_seen`` refreshes its last-seen time)."""
    client = session.scalar(_BY_CREDENTIAL, {"credential_hash": hash_secret(credential)})
    if client is None:
        raise Unauthorized("invalid client credential")
    return client


def seen_is_stale(client: ClientRef, now: datetime, interval_s: float) -> bool:
    """Whether ``client``'s last-seen time is old enough to be written again."""
    return client.last_seen_at <= now - timedelta(seconds=interval_s)


#: The last-seen write (built once: ``server.db.session``).
_MARK_SEEN = (
    update(Client)
    .where(Client.id == bindparam("client_id"), Client.last_seen_at <= bindparam("seen_before"))
    .values(last_seen_at=bindparam("now"))
    .execution_options(synchronize_session=False)
)


def mark_seen(session: Session, client: ClientRef, now: datetime, interval_s: float) -> bool:
    """Set the client's ``last_seen_at`` to ``now`` unless it was written in the last
    ``interval_s``.

    A conditional UPDATE, so that last-seen costs a write at most once per interval per client
    however many requests it makes, and two racing requests write it once. (The column is NOT
    NULL: enrolment sets it.) True if the row changed; ``client`` (maybe detached) follows.
    """
    if not seen_is_stale(client, now, interval_s):
        return False
    result = session.execute(
        _MARK_SEEN,
        {"client_id": client.id, "seen_before": now - timedelta(seconds=interval_s), "now": now},
    )
    if isinstance(client, Client):
        # Not an attribute change: that would be flushed as a second UPDATE.
        set_committed_value(client, "last_seen_at", now)
    else:
        client.last_seen_at = now
    return result.rowcount == 1  # type: ignore[attr-defined]
