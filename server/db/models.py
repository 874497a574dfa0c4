"""Tables of the coordinator: Job, Client, Round, ClientUpdate, GlobalAdapter, AggregationShard.

Types are portable (SQLite and Postgres): UUID primary keys, JSON columns (JSONB on
Postgres), timezone-aware timestamps and string enums checked by the application.
"""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JSONType = JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware timestamps on every backend (SQLite drops the offset; we restore UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class JobStatus(enum.StrEnum):
    ENROLLING = "enrolling"
    RUNNING = "running"
    FINISHED = "finished"
    CANCELLED = "cancelled"
    FAILED = "failed"

    @property
    def ended(self) -> bool:
        """Whether the job can no longer change: finished, cancelled or failed."""
        return self in _ENDED_JOBS


_ENDED_JOBS = frozenset({JobStatus.FINISHED, JobStatus.CANCELLED, JobStatus.FAILED})


class RoundStatus(enum.StrEnum):
    OPEN = "open"
    AGGREGATING = "aggregating"
    CLOSED = "closed"
    FAILED = "failed"


class UpdateStatus(enum.StrEnum):
    PENDING = "pending"  # sampled for the round, nothing accepted yet
    ACCEPTED = "accepted"  # counted in the round
    MISSED = "missed"  # the round closed without an update from this client (straggler)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _status(enum_cls: type[enum.StrEnum]) -> Any:
    return mapped_column(String(16), nullable=False, default=next(iter(enum_cls)).value)


class Job(Base):
    """A federated fine-tuning job: its spec (strategy, ranks, rounds, limits) and its progress."""

    __tablename__ = "jobs"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    status: Mapped[str] = _status(JobStatus)
    failure_reason: Mapped[str | None] = mapped_column(Text)
    # The validated job spec (server.schemas.JobSpec) as submitted, for display and replay.
    spec: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False)
    strategy: Mapped[str] = mapped_column(String(40), nullable=False)
    strategy_options: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False)
    rank_policy: Mapped[str] = mapped_column(String(16), nullable=False)
    r_min: Mapped[int] = mapped_column(Integer, nullable=False)
    r_max: Mapped[int] = mapped_column(Integer, nullable=False)
    total_rounds: Mapped[int] = mapped_column(Integer, nullable=False)
    current_round: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    seed: Mapped[int] = mapped_column(BigInteger, nullable=False)
    join_token_hash: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    # AutoRank over the enrolled cohort: CRITIC weights, criteria names, the stored matrix.
    # Deferred: the matrix has a row per client (half a megabyte at 10,000), and nearly every
    # request loads its job; only the routes that show or extend the ranking read it.
    autorank: Mapped[dict[str, Any] | None] = mapped_column(JSONType, deferred=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    enrolment_deadline_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime, nullable=False, default=utcnow, onupdate=utcnow
    )

    clients: Mapped[list[Client]] = relationship(back_populates="job", lazy="raise")
    rounds: Mapped[list[Round]] = relationship(back_populates="job", lazy="raise")

    __table_args__ = (Index("ix_jobs_status_created", "status", "created_at"),)


class Client(Base):
    """A device enrolled in one job, with its complexity statistics and assigned rank."""

    __tablename__ = "clients"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    job_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False, index=True
    )
    name: Mapped[str | None] = mapped_column(String(200))
    credential_hash: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    # Data-complexity statistics uploaded at enrolment (scalars only).
    stats: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False)
    max_rank: Mapped[int | None] = mapped_column(Integer)
    rank: Mapped[int | None] = mapped_column(Integer)
    closeness: Mapped[float | None] = mapped_column(Float)
    enrolled_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)

    job: Mapped[Job] = relationship(back_populates="clients", lazy="raise")


#: The order of a job's clients wherever it decides something (which clients a round samples,
#: AutoRank's cohort, the order in which aggregation folds updates): by name, the identity a
#: rerun keeps (unique per job), then by id (random) for clients without a name.
CLIENT_ORDER = (Client.name.asc().nulls_last(), Client.id)


class Round(Base):
    """Round ``number`` of a job. Round 0 holds the initial global adapter and trains nobody."""

    __tablename__ = "rounds"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    job_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False
    )
    number: Mapped[int] = mapped_column(Integer, nullable=False)
    status: Mapped[str] = _status(RoundStatus)
    failure_reason: Mapped[str | None] = mapped_column(Text)
    sampled: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    quorum: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    extensions: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    deadline_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    aggregating_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Aggregation timings and statistics (seconds, bytes, coverage), written by the aggregator.
    aggregation: Mapped[dict[str, Any] | None] = mapped_column(JSONType)

    job: Mapped[Job] = relationship(back_populates="rounds", lazy="raise")

    __table_args__ = (
        UniqueConstraint("job_id", "number", name="uq_rounds_job_id_number"),
        Index("ix_rounds_status_deadline", "status", "deadline_at"),
    )


class ClientUpdate(Base):
    """One client's part in one round: created ``pending`` when sampled, ``accepted`` on upload."""

    __tablename__ = "client_updates"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    round_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("rounds.id", ondelete="CASCADE"), nullable=False
    )
    client_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("clients.id", ondelete="CASCADE"), nullable=False, index=True
    )
    status: Mapped[str] = _status(UpdateStatus)
    rank: Mapped[int] = mapped_column(Integer, nullable=False)
    n_samples: Mapped[int | None] = mapped_column(Integer)
    sha256: Mapped[str | None] = mapped_column(String(64))
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    storage_key: Mapped[str | None] = mapped_column(String(400))
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    upload_seconds: Mapped[float | None] = mapped_column(Float)
    assigned_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    accepted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    rejections: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    last_rejection: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        UniqueConstraint("round_id", "client_id", name="uq_client_updates_round_id_client_id"),
        Index("ix_client_updates_round_status", "round_id", "status"),
    )


class GlobalAdapter(Base):
    """The aggregated adapter a round produced (round 0: the initial adapter)."""

    __tablename__ = "global_adapters"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    round_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("rounds.id", ondelete="CASCADE"), nullable=False, unique=True
    )
    storage_key: Mapped[str] = mapped_column(String(400), nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    size_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    rank: Mapped[int] = mapped_column(Integer, nullable=False)
    n_updates: Mapped[int] = mapped_column(Integer, nullable=False)
    total_samples: Mapped[int] = mapped_column(BigInteger, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)


class ShardStatus(enum.StrEnum):
    PENDING = "pending"  # planned, not claimed by a worker yet
    RUNNING = "running"  # claimed (``claimed_by``/``claimed_at``: the lease)
    DONE = "done"  # its partial sums are stored (or, unsharded, the round is closed)


class AggregationShard(Base):
    """One step of a round's aggregation: the whole round (one shard) or one cell of the grid
    module groups x client groups. The combine step is driven by these rows' status."""

    __tablename__ = "aggregation_shards"

    round_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("rounds.id", ondelete="CASCADE"), primary_key=True
    )
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    module_group: Mapped[int] = mapped_column(Integer, nullable=False)
    module_groups: Mapped[int] = mapped_column(Integer, nullable=False)
    client_group: Mapped[int] = mapped_column(Integer, nullable=False)
    client_groups: Mapped[int] = mapped_column(Integer, nullable=False)
    status: Mapped[str] = _status(ShardStatus)
    # Deliveries that claimed this shard; a worker lost mid-step leaves it counted.
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    storage_key: Mapped[str | None] = mapped_column(String(400))
    # Timings and sizes of this step (seconds, read_seconds, bytes_in, updates).
    stats: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
