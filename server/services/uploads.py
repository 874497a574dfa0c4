"""Client updates: checks before the body is read, the size cap while it streams in,
validation, and acceptance.

An upload counts only after the whole file passed ``validate_adapter`` and the round
was still open when its row changed to ``accepted``. Accepted updates are immutable:
an identical retry is answered 200 (without reading its body when its declared SHA-256 is
the accepted one's), a different body 409, a late one 410.

Uploads to one round do not wait for each other: an acceptance holds the round's row in
share mode (``FOR SHARE``, taken by the accepting statement itself), which other acceptances
share and which only a change of the round's status waits for. Each accepted upload then
counts the round's updates after its commit (``aggregate_if_complete``): the last to commit
sees them all, and the round's move to aggregating is a compare-and-set, so exactly one of
them queues it.
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy import update as sql_update
from sqlalchemy.orm import Session

from server.config import Settings
from server.db.models import ClientUpdate, Round, RoundStatus, UpdateStatus, utcnow
from server.db.session import after_commit, read_scope, session_scope
from server.errors import Conflict, Gone, InvalidRequest, PayloadTooLarge
from server.limits import MAX_METRICS, MAX_SAMPLES
from server.observability.prometheus import UPLOADS_ACCEPTED
from server.services import rounds
from server.services.client_tasks import client_round
from server.services.enrolment import mark_seen
from server.services.job_definitions import job_definition
from server.services.known_clients import ClientRef
from server.services.runtime import Runtime
from server.services.strategies import upload_spec
from server.storage import update_key


@dataclass(frozen=True)
class UploadTarget:
    """Where an upload goes and what it must contain; computed before the body is read."""

    client: ClientRef  # marked seen when the upload is settled
    update_id: uuid.UUID
    round_id: uuid.UUID
    round_number: int
    round_sampled: int
    job_id: uuid.UUID
    client_id: uuid.UUID
    rank: int
    expected: dict[str, tuple[int, ...]]
    accepted_sha256: str | None


def prepare_upload(session: Session, client: ClientRef, round_id: uuid.UUID) -> UploadTarget:
    """Refuse an upload that cannot count, before a byte of it is read: one read of the round
    and the client's update in it (the job's definition is kept in memory)."""
    rnd = client_round(session, client, round_id)
    update, number = rnd.update, rnd.number
    if update is None:
        raise Conflict(
            f"this client was not sampled for round {number}; "
            "ask GET /api/v1/clients/me/task for its current task"
        )
    if update.status != UpdateStatus.ACCEPTED:
        _require_open(number, rnd.status, update.status)
    return UploadTarget(
        client=client,
        update_id=update.id,
        round_id=round_id,
        round_number=number,
        round_sampled=rnd.sampled,
        job_id=rnd.job_id,
        client_id=client.id,
        rank=update.rank,
        expected=upload_spec(job_definition(session, rnd.job_id), update.rank),
        accepted_sha256=update.sha256 if update.status == UpdateStatus.ACCEPTED else None,
    )


def _require_open(number: int, round_status: str, update_status: str) -> None:
    if round_status != RoundStatus.OPEN or update_status == UpdateStatus.MISSED:
        raise Gone(f"round {number} is {round_status}; it no longer accepts updates")


@dataclass(frozen=True)
class Declaration:
    """What the client's headers declare about its upload, checked before the body is read."""

    n_samples: int
    metrics: dict[str, float]
    identical_retry: bool  # its SHA-256 is the accepted update's: answered without the body


def declare(
    target: UploadTarget,
    settings: Settings,
    *,
    num_samples: str | None,
    metrics: str | None,
    content_length: str | None,
    content_sha256: str | None,
) -> Declaration:
    """Check the upload's headers (Flaas-Num-Samples, Flaas-Metrics, a Content-Length over
    ``FLAAS_MAX_UPLOAD_BYTES``), and say whether it retries the accepted update."""
    n_samples = parse_n_samples(num_samples)
    parsed = parse_metrics(metrics, settings.max_metrics_bytes)
    if content_length is not None and content_length.isdigit():
        _refuse_over(int(content_length), settings.max_upload_bytes)
    retry = target.accepted_sha256 is not None and target.accepted_sha256 == content_sha256
    return Declaration(n_samples, parsed, retry)


class UploadBody:
    """An upload's body as it streams in: its size, held to ``FLAAS_MAX_UPLOAD_BYTES``
    (``take`` refuses the chunk that crosses it), and its SHA-256."""

    def __init__(self, settings: Settings) -> None:
        self.limit = settings.max_upload_bytes
        self.size = 0
        self._digest = hashlib.sha256()

    def take(self, chunk: bytes) -> None:
        self.size += len(chunk)
        _refuse_over(self.size, self.limit)
        self._digest.update(chunk)

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()


def _refuse_over(size: int, limit: int) -> None:
    if size > limit:
        raise PayloadTooLarge(f"the update is larger than the {limit}-byte limit")


@dataclass(frozen=True)
class ReceivedUpdate:
    """An upload that passed validation, staged on local disk, with what the client declared."""

    staged: Path
    sha256: str
    size_bytes: int
    n_samples: int
    metrics: dict[str, float]
    upload_seconds: float


def accept_update(
    session: Session, rt: Runtime, target: UploadTarget, received: ReceivedUpdate
) -> tuple[ClientUpdate, bool]:
    """Store a validated upload, accept it and mark its client seen, in one transaction (the
    upload's one commit); returns (update, created). Once it has committed, a created
    update's route calls ``aggregate_if_complete``.
    """
    # The key is content-addressed, so the blob can be stored before the row changes: a
    # retry writes the same bytes to the same key, and a refused upload's blob is deleted.
    key = update_key(target.job_id, target.round_number, target.client_id, received.sha256)
    rt.store.put_file(key, received.staged)
    try:
        counted = _accept(session, target, key, received)
    except (Conflict, Gone):
        rt.store.delete(key)
        raise
    # Last, after the round's: the client row is the last lock this transaction takes.
    mark_seen(session, target.client, utcnow(), rt.settings.last_seen_interval_s)
    return counted


#: The acceptance (built once: ``server.db.session``): the update, if still pending, while its
#: round is open. The round's row is share-locked before the update's (the order a round's
#: close takes them in): it cannot start aggregating until this transaction ends. SQLite runs
#: one write transaction at a time instead and ignores the lock. RETURNING gives the stored row
#: without a read, and nothing else in the session needs synchronising (its transaction began
#: here). (No bind of an UPDATE may take a column's name.)
_ACCEPT = (
    sql_update(ClientUpdate)
    .where(
        ClientUpdate.id == bindparam("update_id"),
        ClientUpdate.status == UpdateStatus.PENDING,
        select(Round.id)
        .where(Round.id == bindparam("open_round_id"), Round.status == RoundStatus.OPEN)
        .with_for_update(read=True)
        .exists(),
    )
    .values(
        status=UpdateStatus.ACCEPTED,
        n_samples=bindparam("new_n_samples"),
        sha256=bindparam("new_sha256"),
        size_bytes=bindparam("new_size_bytes"),
        storage_key=bindparam("new_storage_key"),
        metrics=bindparam("new_metrics"),
        upload_seconds=bindparam("new_upload_seconds"),
        accepted_at=bindparam("new_accepted_at"),
    )
    .returning(ClientUpdate)
    .execution_options(populate_existing=True, synchronize_session=False)
)


def _accept(
    session: Session, target: UploadTarget, key: str, received: ReceivedUpdate
) -> tuple[ClientUpdate, bool]:
    update = session.scalar(
        _ACCEPT,
        {
            "update_id": target.update_id,
            "open_round_id": target.round_id,
            "new_n_samples": received.n_samples,
            "new_sha256": received.sha256,
            "new_size_bytes": received.size_bytes,
            "new_storage_key": key,
            "new_metrics": received.metrics,
            "new_upload_seconds": received.upload_seconds,
            "new_accepted_at": utcnow(),
        },
    )
    if update is None:  # accepted already (a retry), missed, or the round no longer open
        rnd = session.get_one(Round, target.round_id, populate_existing=True)
        update = session.get_one(ClientUpdate, target.update_id, populate_existing=True)
        if update.status != UpdateStatus.ACCEPTED:
            _require_open(rnd.number, rnd.status, update.status)
        return _identical_retry(update, rnd, received.sha256), False
    after_commit(session, UPLOADS_ACCEPTED.inc)
    return update, True


def aggregate_if_complete(rt: Runtime, target: UploadTarget) -> None:
    """After an accepted upload's commit: queue the round's aggregation if every sampled
    client's update is in (one read; a write transaction only for the round's last)."""
    with read_scope(rt.sessions) as session:
        if rounds.accepted_count(session, target.round_id) < target.round_sampled:
            return
    with session_scope(rt.sessions) as session:
        # A compare-and-set: of uploads that all saw the round complete, one moves it.
        rounds.request_aggregation(session, rt, session.get_one(Round, target.round_id), utcnow())


def _identical_retry(update: ClientUpdate, rnd: Round, sha256: str) -> ClientUpdate:
    if update.sha256 == sha256:
        return update
    raise Conflict(
        f"a different update (sha256 {update.sha256}) was already accepted for round "
        f"{rnd.number}; accepted updates are immutable"
    )


def get_update(session: Session, update_id: uuid.UUID) -> ClientUpdate:
    return session.get_one(ClientUpdate, update_id)


def record_rejection(session: Session, rt: Runtime, target: UploadTarget, reason: str) -> None:
    """Keep the latest rejection reason on the update row (the dashboard shows it), and mark
    the client seen, in the rejection's one transaction."""
    update = session.get(ClientUpdate, target.update_id)
    if update is not None and update.status == UpdateStatus.PENDING:
        update.rejections += 1
        update.last_rejection = reason[:2000]
        session.flush()  # the update row before the client row, as when accepting
    mark_seen(session, target.client, utcnow(), rt.settings.last_seen_interval_s)


def parse_n_samples(raw: str | None) -> int:
    if raw is None:
        raise InvalidRequest("the Flaas-Num-Samples header is required (an integer >= 1)")
    text = raw.strip()
    # ASCII digits only: Python's int() also reads "+5", "1_000" and other scripts' digits,
    # which a client in another language would not expect to be a number (docs/protocol.md).
    if not (text.isascii() and text.isdigit()):
        raise InvalidRequest(
            f"Flaas-Num-Samples must be a decimal integer (digits 0-9), got {raw[:40]!r}"
        )
    try:
        value = int(text)
    except ValueError:  # more digits than Python converts
        raise InvalidRequest(f"Flaas-Num-Samples must lie in [1, {MAX_SAMPLES}]") from None
    if not 1 <= value <= MAX_SAMPLES:
        raise InvalidRequest(f"Flaas-Num-Samples must lie in [1, {MAX_SAMPLES}], got {value}")
    return value


def parse_metrics(raw: str | None, max_bytes: int) -> dict[str, float]:
    """The Flaas-Metrics header: a small JSON object of string -> finite number."""
    if raw is None or not raw.strip():
        return {}
    if len(raw.encode("utf-8")) > max_bytes:
        raise PayloadTooLarge(f"Flaas-Metrics is larger than {max_bytes} bytes")
    try:
        value: Any = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
        raise InvalidRequest("Flaas-Metrics must be a flat JSON object") from None
    if not isinstance(value, dict) or len(value) > MAX_METRICS:
        raise InvalidRequest(
            f"Flaas-Metrics must be a JSON object of at most {MAX_METRICS} entries"
        )
    metrics: dict[str, float] = {}
    for name, number in value.items():
        if len(name) > 100 or isinstance(number, bool) or not isinstance(number, int | float):
            raise InvalidRequest(
                f"Flaas-Metrics entry {name[:100]!r} must map a short name to a number"
            )
        try:
            metric = float(number)
        except OverflowError:  # an integer beyond float's range
            raise InvalidRequest(f"Flaas-Metrics entry {name[:100]!r} is too large") from None
        if not math.isfinite(metric):
            raise InvalidRequest(f"Flaas-Metrics entry {name[:100]!r} is not finite")
        metrics[name] = metric
    return metrics
