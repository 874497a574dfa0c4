"""Fixtures for service tests: a Runtime on a migrated database (each backend) whose dispatcher
and announcer record what they are given, and jobs put in a given state through the services."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy.orm import Session

from server.db.migrate import upgrade
from server.db.models import Client, Job
from server.db.session import make_engine, make_session_factory, session_scope
from server.schemas.job_spec import JobSpec
from server.services import jobs, rounds
from server.services.runtime import Runtime
from server.storage import open_store
from tests.support import job_spec, settings_for, stats

Row = TypeVar("Row")


@dataclass
class RecordingRuntime:
    """A coordinator's Runtime whose aggregations and job announcements are only recorded."""

    runtime: Runtime = field(init=False)
    dispatched: list[uuid.UUID] = field(default_factory=list)
    announced: list[uuid.UUID] = field(default_factory=list)

    def read(self, model: type[Row], row_id: uuid.UUID) -> Row:
        """The row as committed, read in a session of its own."""
        with session_scope(self.runtime.sessions) as session:
            return session.get_one(model, row_id)


@contextmanager
def recording_runtime(database_url: str, storage: Path) -> Iterator[RecordingRuntime]:
    """A RecordingRuntime on ``database_url`` (migrated here), its adapters under ``storage``."""
    settings = settings_for(database_url, storage)
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    recording = RecordingRuntime()
    recording.runtime = Runtime(
        settings=settings,
        sessions=make_session_factory(engine),
        store=open_store(settings.storage_url),
        dispatch=recording.dispatched.append,
        notify=recording.announced.append,
    )
    try:
        yield recording
    finally:
        engine.dispose()


@pytest.fixture
def recording(database_url: str, tmp_path: Path) -> Iterator[RecordingRuntime]:
    with recording_runtime(database_url, tmp_path / "adapters") as recording:
        yield recording


@pytest.fixture
def recording_on_postgres(postgres_url: str, tmp_path: Path) -> Iterator[RecordingRuntime]:
    """For races SQLite cannot have (it serialises whole write transactions)."""
    with recording_runtime(postgres_url, tmp_path / "adapters") as recording:
        yield recording


def enrolling_job(session: Session, rt: Runtime, clients: int = 3, **spec: Any) -> Job:
    """A job (``tests.support.job_spec`` with ``spec`` changed) and ``clients`` enrolled ones,
    still enrolling (added as rows: enrolment's own rules are not under test here)."""
    job, _token = jobs.create_job(
        session,
        JobSpec.model_validate(job_spec(**spec)),
        max_clients=rt.settings.max_clients_per_job,
    )
    for i in range(clients):
        session.add(
            Client(
                job_id=job.id,
                name=f"device-{i}",
                credential_hash=uuid.uuid4().hex,
                stats=stats(20 + 40 * i, entropy=0.1 + (0.3 * i) % 0.9),
            )
        )
    session.flush()
    return job


def running_job(session: Session, rt: Runtime, now: datetime, clients: int = 3, **spec: Any) -> Job:
    """A started job: round 0 closed, round 1 open."""
    job = enrolling_job(session, rt, clients, **spec)
    assert rounds.start_job(session, rt, job, now)
    return job
