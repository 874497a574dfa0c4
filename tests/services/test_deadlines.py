"""Deadlines (``services.deadlines``): what a passed enrolment window or round deadline does,
and that nothing happens before it passes."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.db.models import ClientUpdate, Job, JobStatus, Round, RoundStatus, UpdateStatus, utcnow
from server.db.session import session_scope
from server.services import deadlines, rounds
from tests.services.conftest import RecordingRuntime, enrolling_job, running_job

SMALL_WINDOW = {"min_clients": 2, "target_clients": 5, "timeout_s": 300}


def _open_round(
    recording: RecordingRuntime, now: datetime, accepted: int, **spec: object
) -> tuple[Job, Round]:
    """A running job whose round 1 (3 sampled, quorum 2) has ``accepted`` updates."""
    rt = recording.runtime
    with session_scope(rt.sessions) as session:
        job = running_job(session, rt, now, **spec)
        rnd = session.scalars(select(Round).where(Round.job_id == job.id, Round.number == 1)).one()
        updates = session.scalars(select(ClientUpdate).where(ClientUpdate.round_id == rnd.id))
        for update in list(updates)[:accepted]:
            update.status = UpdateStatus.ACCEPTED
    recording.announced.clear()
    return job, rnd


def _apply(recording: RecordingRuntime, now: datetime) -> None:
    with session_scope(recording.runtime.sessions) as session:
        deadlines.apply_passed(session, recording.runtime, now)


def _rounds(session: Session, job_id: uuid.UUID) -> list[Round]:
    return list(session.scalars(select(Round).where(Round.job_id == job_id).order_by(Round.number)))


# -- enrolment windows --------------------------------------------------------------------


def test_an_enrolment_window_closing_with_enough_clients_starts_the_job(
    recording: RecordingRuntime,
) -> None:
    rt = recording.runtime
    with session_scope(rt.sessions) as session:
        job = enrolling_job(session, rt, clients=2, enrolment=SMALL_WINDOW)
    _apply(recording, job.enrolment_deadline_at)
    assert recording.announced == [job.id]
    stored = recording.read(Job, job.id)
    assert stored.status == JobStatus.RUNNING
    assert stored.started_at == job.enrolment_deadline_at and stored.current_round == 1
    with session_scope(rt.sessions) as session:
        opened = [(r.number, r.status, r.sampled) for r in _rounds(session, job.id)]
    assert opened == [(0, RoundStatus.CLOSED, 0), (1, RoundStatus.OPEN, 2)]


def test_an_enrolment_window_closing_with_too_few_clients_fails_the_job(
    recording: RecordingRuntime,
) -> None:
    rt = recording.runtime
    with session_scope(rt.sessions) as session:
        job = enrolling_job(session, rt, clients=1, enrolment=SMALL_WINDOW)
    _apply(recording, job.enrolment_deadline_at)
    assert recording.announced == [job.id]
    stored = recording.read(Job, job.id)
    assert stored.status == JobStatus.FAILED
    assert stored.finished_at == job.enrolment_deadline_at and stored.started_at is None
    assert stored.failure_reason == ("enrolment closed with 1 client(s); the job needs at least 2")
    with session_scope(rt.sessions) as session:
        assert _rounds(session, job.id) == []


def test_an_open_enrolment_window_changes_nothing(recording: RecordingRuntime) -> None:
    rt = recording.runtime
    with session_scope(rt.sessions) as session:
        job = enrolling_job(session, rt, clients=1, enrolment=SMALL_WINDOW)
    _apply(recording, job.enrolment_deadline_at - timedelta(seconds=1))
    assert recording.announced == []
    assert recording.read(Job, job.id).status == JobStatus.ENROLLING


# -- round deadlines ----------------------------------------------------------------------


def test_a_round_deadline_with_its_quorum_starts_the_aggregation(
    recording: RecordingRuntime,
) -> None:
    _job, rnd = _open_round(recording, utcnow(), accepted=2)
    _apply(recording, rnd.deadline_at)
    assert recording.dispatched == [rnd.id]
    stored = recording.read(Round, rnd.id)
    assert stored.status == RoundStatus.AGGREGATING and stored.aggregating_at == rnd.deadline_at


def test_a_round_deadline_below_quorum_extends_the_round(recording: RecordingRuntime) -> None:
    job, rnd = _open_round(recording, utcnow(), accepted=1)
    at = rnd.deadline_at + timedelta(seconds=7)
    _apply(recording, at)
    assert recording.dispatched == [] and recording.announced == []
    stored = recording.read(Round, rnd.id)
    assert stored.status == RoundStatus.OPEN and stored.extensions == 1
    assert stored.deadline_at == at + timedelta(seconds=300)
    assert recording.read(Job, job.id).status == JobStatus.RUNNING


def test_a_round_deadline_below_quorum_after_the_last_extension_fails_the_round(
    recording: RecordingRuntime,
) -> None:
    job, rnd = _open_round(recording, utcnow(), accepted=1)
    at = rnd.deadline_at
    for extension in (1, 2):
        _apply(recording, at)
        at = recording.read(Round, rnd.id).deadline_at
        assert recording.read(Round, rnd.id).extensions == extension
    _apply(recording, at)
    reason = "deadline passed with 1 update(s) of the 2 needed (after 2 extension(s))"
    stored = recording.read(Round, rnd.id)
    assert stored.status == RoundStatus.FAILED and stored.failure_reason == reason
    assert stored.closed_at == at
    assert recording.announced == [job.id] and recording.dispatched == []
    failed = recording.read(Job, job.id)
    assert failed.status == JobStatus.FAILED
    assert failed.failure_reason == f"round 1 failed: {reason}"


def test_a_round_deadline_below_quorum_fails_at_once_when_the_job_says_fail(
    recording: RecordingRuntime,
) -> None:
    job, rnd = _open_round(
        recording, utcnow(), accepted=0, round={"timeout_s": 300, "on_deadline": "fail"}
    )
    _apply(recording, rnd.deadline_at)
    stored = recording.read(Round, rnd.id)
    assert stored.status == RoundStatus.FAILED and stored.extensions == 0
    assert stored.failure_reason == (
        "deadline passed with 0 update(s) of the 2 needed (after 0 extension(s))"
    )
    assert recording.read(Job, job.id).status == JobStatus.FAILED


def test_a_round_before_its_deadline_is_left_open(recording: RecordingRuntime) -> None:
    _job, rnd = _open_round(recording, utcnow(), accepted=2)
    _apply(recording, rnd.deadline_at - timedelta(seconds=1))
    assert recording.dispatched == []
    stored = recording.read(Round, rnd.id)
    assert stored.status == RoundStatus.OPEN and stored.extensions == 0


def test_a_passed_deadline_leaves_an_aggregating_round_alone(recording: RecordingRuntime) -> None:
    rt = recording.runtime
    job, rnd = _open_round(recording, utcnow(), accepted=1)
    with session_scope(rt.sessions) as session:
        assert rounds.request_aggregation(session, rt, session.get_one(Round, rnd.id), utcnow())
    recording.dispatched.clear()
    _apply(recording, rnd.deadline_at + timedelta(days=1))
    assert recording.dispatched == [] and recording.announced == []
    stored = recording.read(Round, rnd.id)
    assert stored.status == RoundStatus.AGGREGATING and stored.extensions == 0
    assert recording.read(Job, job.id).status == JobStatus.RUNNING
