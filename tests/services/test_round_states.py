"""The round state machine (``services.rounds``): every transition of a job and a round, and
every transition refused because the row is no longer in the state it expects."""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.db.models import (
    Client,
    ClientUpdate,
    GlobalAdapter,
    Job,
    JobStatus,
    Round,
    RoundStatus,
    UpdateStatus,
    utcnow,
)
from server.db.session import session_scope
from server.errors import Conflict
from server.services import rounds
from server.storage import global_key
from tests.services.conftest import RecordingRuntime, enrolling_job, running_job


def _round(session: Session, job_id: uuid.UUID, number: int) -> Round:
    return session.scalars(
        select(Round).where(Round.job_id == job_id, Round.number == number)
    ).one()


def _updates(session: Session, round_id: uuid.UUID) -> list[ClientUpdate]:
    return list(session.scalars(select(ClientUpdate).where(ClientUpdate.round_id == round_id)))


def _adapter(round_id: uuid.UUID) -> GlobalAdapter:
    return GlobalAdapter(
        round_id=round_id,
        storage_key=f"test/{round_id}",
        sha256="0" * 64,
        size_bytes=1,
        rank=8,
        n_updates=2,
        total_samples=40,
    )


def _accept(session: Session, update: ClientUpdate, now: datetime) -> bool:
    return rounds.transition(
        session,
        ClientUpdate,
        update.id,
        UpdateStatus.PENDING,
        status=UpdateStatus.ACCEPTED,
        n_samples=20,
        accepted_at=now,
    )


def _aggregating(recording: RecordingRuntime, now: datetime, **spec: object) -> tuple[Job, Round]:
    """A running job whose round 1 got two updates and was handed to the aggregator."""
    rt = recording.runtime
    with session_scope(rt.sessions) as session:
        job = running_job(session, rt, now, **spec)
        rnd = _round(session, job.id, 1)
        for update in _updates(session, rnd.id)[:2]:
            assert _accept(session, update, now)
        assert rounds.request_aggregation(session, rt, rnd, now)
    recording.dispatched.clear()
    recording.announced.clear()
    return job, rnd


# -- the compare-and-set ------------------------------------------------------------------


def test_a_transition_sets_the_values_when_the_status_is_the_expected_one(
    recording: RecordingRuntime,
) -> None:
    rt = recording.runtime
    with session_scope(rt.sessions) as session:
        job = enrolling_job(session, rt)
        assert rounds.transition(
            session, Job, job.id, JobStatus.ENROLLING, status=JobStatus.RUNNING, current_round=5
        )
    stored = recording.read(Job, job.id)
    assert (stored.status, stored.current_round) == (JobStatus.RUNNING, 5)


def test_a_transition_from_a_status_the_row_no_longer_has_changes_nothing(
    recording: RecordingRuntime,
) -> None:
    rt = recording.runtime
    with session_scope(rt.sessions) as session:
        job = enrolling_job(session, rt)
        assert not rounds.transition(
            session, Job, job.id, JobStatus.RUNNING, status=JobStatus.FINISHED, current_round=5
        )
    stored = recording.read(Job, job.id)
    assert (stored.status, stored.current_round) == (JobStatus.ENROLLING, 0)


# -- job start and round open -------------------------------------------------------------


def test_starting_a_job_stores_round_0_and_opens_round_1(recording: RecordingRuntime) -> None:
    rt = recording.runtime
    now = utcnow()
    with session_scope(rt.sessions) as session:
        job = enrolling_job(session, rt)
        assert rounds.start_job(session, rt, job, now)
        assert recording.announced == []  # not before the commit
    assert recording.announced == [job.id]
    stored = recording.read(Job, job.id)
    assert stored.status == JobStatus.RUNNING
    assert stored.started_at == now and stored.current_round == 1
    with session_scope(rt.sessions) as session:
        clients = list(session.scalars(select(Client).where(Client.job_id == job.id)))
        assert all(2 <= (c.rank or 0) <= 8 for c in clients)
        round0 = _round(session, job.id, 0)
        assert round0.status == RoundStatus.CLOSED
        assert round0.opened_at == round0.closed_at == now
        initial = session.scalars(
            select(GlobalAdapter).where(GlobalAdapter.round_id == round0.id)
        ).one()
        assert initial.storage_key == global_key(job.id, 0)
        blob = rt.store.get_bytes(initial.storage_key)
        assert initial.sha256 == hashlib.sha256(blob).hexdigest()
        assert (initial.size_bytes, initial.rank, initial.n_updates) == (len(blob), 8, 0)
        round1 = _round(session, job.id, 1)
        assert round1.status == RoundStatus.OPEN
        assert (round1.sampled, round1.quorum) == (3, 2)
        assert round1.opened_at == now and round1.deadline_at == now + timedelta(seconds=300)
        updates = _updates(session, round1.id)
        ranks = {c.id: c.rank for c in clients}
        assert {u.client_id for u in updates} == set(ranks)
        assert all(
            u.status == UpdateStatus.PENDING and u.rank == ranks[u.client_id] for u in updates
        )


def test_a_job_no_longer_enrolling_is_not_started_again(recording: RecordingRuntime) -> None:
    rt = recording.runtime
    now = utcnow()
    with session_scope(rt.sessions) as session:
        job = running_job(session, rt, now)
    recording.announced.clear()
    with session_scope(rt.sessions) as session:
        job = session.get_one(Job, job.id)
        assert not rounds.start_job(session, rt, job, now + timedelta(seconds=1))
    assert recording.announced == []
    assert recording.read(Job, job.id).started_at == now
    with session_scope(rt.sessions) as session:
        assert len(list(session.scalars(select(Round).where(Round.job_id == job.id)))) == 2


def test_a_round_samples_the_same_ranked_clients_for_the_same_seed(
    recording: RecordingRuntime,
) -> None:
    rt = recording.runtime
    now = utcnow()
    chosen: list[set[str | None]] = []
    for _ in range(2):
        with session_scope(rt.sessions) as session:
            job = running_job(session, rt, now, clients=6, sampling={"fraction": 0.5})
            unranked = Client(
                job_id=job.id, name="device-late", credential_hash=uuid.uuid4().hex, stats={}
            )
            session.add(unranked)
            session.flush()
            rnd = rounds.open_round(session, job, 2, now)
            assert (rnd.sampled, rnd.quorum, job.current_round) == (3, 2, 2)
            names = session.scalars(
                select(Client.name)
                .join(ClientUpdate, ClientUpdate.client_id == Client.id)
                .where(ClientUpdate.round_id == rnd.id)
            )
            chosen.append(set(names))
    assert chosen[0] == chosen[1] and len(chosen[0]) == 3
    assert "device-late" not in chosen[0]  # no rank yet: not eligible


# -- uploads toward the quorum, and aggregation -------------------------------------------


def test_only_accepted_updates_count_toward_the_quorum(recording: RecordingRuntime) -> None:
    rt = recording.runtime
    now = utcnow()
    with session_scope(rt.sessions) as session:
        job = running_job(session, rt, now)
        rnd = _round(session, job.id, 1)
        first, second, _third = _updates(session, rnd.id)
        assert rounds.accepted_count(session, rnd.id) == 0
        assert _accept(session, first, now)
        assert rounds.accepted_count(session, rnd.id) == 1
        assert rounds.transition(
            session, ClientUpdate, second.id, UpdateStatus.PENDING, status=UpdateStatus.MISSED
        )
        assert rounds.accepted_count(session, rnd.id) == 1


def test_an_update_already_accepted_is_not_accepted_again(recording: RecordingRuntime) -> None:
    rt = recording.runtime
    now = utcnow()
    with session_scope(rt.sessions) as session:
        job = running_job(session, rt, now)
        update = _updates(session, _round(session, job.id, 1).id)[0]
        assert _accept(session, update, now)
        assert not _accept(session, update, now + timedelta(seconds=1))
    assert recording.read(ClientUpdate, update.id).accepted_at == now


def test_requesting_aggregation_dispatches_the_round_after_commit(
    recording: RecordingRuntime,
) -> None:
    rt = recording.runtime
    now = utcnow()
    later = now + timedelta(seconds=5)
    with session_scope(rt.sessions) as session:
        job = running_job(session, rt, now)
        rnd = _round(session, job.id, 1)
        assert rounds.request_aggregation(session, rt, rnd, later)
        assert recording.dispatched == []
    assert recording.dispatched == [rnd.id]
    stored = recording.read(Round, rnd.id)
    assert stored.status == RoundStatus.AGGREGATING and stored.aggregating_at == later


def test_an_aggregation_requested_in_a_rolled_back_transaction_is_never_dispatched(
    recording: RecordingRuntime,
) -> None:
    rt = recording.runtime
    now = utcnow()
    with session_scope(rt.sessions) as session:
        job = running_job(session, rt, now)
        round_id = _round(session, job.id, 1).id
    with pytest.raises(RuntimeError), session_scope(rt.sessions) as session:
        assert rounds.request_aggregation(session, rt, session.get_one(Round, round_id), now)
        raise RuntimeError("the request failed after the transition")
    assert recording.dispatched == []
    assert recording.read(Round, round_id).status == RoundStatus.OPEN


def test_a_round_already_aggregating_is_not_dispatched_again(recording: RecordingRuntime) -> None:
    rt = recording.runtime
    now = utcnow()
    _job, rnd = _aggregating(recording, now)
    with session_scope(rt.sessions) as session:
        rnd = session.get_one(Round, rnd.id)
        assert not rounds.request_aggregation(session, rt, rnd, now + timedelta(seconds=9))
    assert recording.dispatched == []
    assert recording.read(Round, rnd.id).aggregating_at == now


# -- closing rounds and finishing jobs ----------------------------------------------------


def test_closing_a_round_opens_the_next_and_marks_stragglers_missed(
    recording: RecordingRuntime,
) -> None:
    rt = recording.runtime
    now = utcnow()
    later = now + timedelta(seconds=30)
    job, rnd = _aggregating(recording, now)
    with session_scope(rt.sessions) as session:
        adapter = _adapter(rnd.id)
        assert rounds.close_round(session, rt, rnd.id, adapter, {"seconds": 1.5}, later)
        assert recording.announced == []
    assert recording.announced == [job.id]
    stored = recording.read(Round, rnd.id)
    assert stored.status == RoundStatus.CLOSED
    assert stored.closed_at == later and stored.aggregation == {"seconds": 1.5}
    assert recording.read(GlobalAdapter, adapter.id).round_id == rnd.id
    assert recording.read(Job, job.id).current_round == 2
    with session_scope(rt.sessions) as session:
        statuses = sorted(u.status for u in _updates(session, rnd.id))
        assert statuses == [UpdateStatus.ACCEPTED, UpdateStatus.ACCEPTED, UpdateStatus.MISSED]
        round2 = _round(session, job.id, 2)
        assert round2.status == RoundStatus.OPEN and round2.opened_at == later
        assert len(_updates(session, round2.id)) == 3


def test_closing_the_last_round_finishes_the_job(recording: RecordingRuntime) -> None:
    rt = recording.runtime
    now = utcnow()
    later = now + timedelta(seconds=30)
    job, rnd = _aggregating(recording, now, rounds=1)
    with session_scope(rt.sessions) as session:
        assert rounds.close_round(session, rt, rnd.id, _adapter(rnd.id), {}, later)
    assert recording.announced == [job.id]
    stored = recording.read(Job, job.id)
    assert stored.status == JobStatus.FINISHED and stored.finished_at == later
    assert stored.current_round == 1
    with session_scope(rt.sessions) as session:
        assert (
            session.scalars(select(Round).where(Round.job_id == job.id, Round.number == 2)).first()
            is None
        )


def test_a_round_closed_by_another_worker_is_not_closed_again(
    recording: RecordingRuntime,
) -> None:
    rt = recording.runtime
    now = utcnow()
    later = now + timedelta(seconds=30)
    job, rnd = _aggregating(recording, now)
    with session_scope(rt.sessions) as session:
        assert rounds.close_round(session, rt, rnd.id, _adapter(rnd.id), {"by": 1}, later)
    recording.announced.clear()
    duplicate = _adapter(rnd.id)
    duplicate.storage_key = "test/duplicate"
    with session_scope(rt.sessions) as session:
        assert not rounds.close_round(session, rt, rnd.id, duplicate, {"by": 2}, later)
    assert recording.announced == []
    assert recording.read(Round, rnd.id).aggregation == {"by": 1}
    assert recording.read(Job, job.id).current_round == 2
    with session_scope(rt.sessions) as session:
        adapters = session.scalars(select(GlobalAdapter).where(GlobalAdapter.round_id == rnd.id))
        assert [a.storage_key for a in adapters] == [f"test/{rnd.id}"]


def test_a_round_closing_after_its_job_ended_opens_nothing(recording: RecordingRuntime) -> None:
    rt = recording.runtime
    now = utcnow()
    later = now + timedelta(seconds=30)
    job, rnd = _aggregating(recording, now)
    with session_scope(rt.sessions) as session:
        rounds.cancel_job(session, rt, session.get_one(Job, job.id), now)
    recording.announced.clear()
    with session_scope(rt.sessions) as session:
        assert rounds.close_round(session, rt, rnd.id, _adapter(rnd.id), {}, later)
    assert recording.announced == []
    assert recording.read(Round, rnd.id).status == RoundStatus.CLOSED
    stored = recording.read(Job, job.id)
    assert stored.status == JobStatus.CANCELLED and stored.current_round == 1


# -- failures -----------------------------------------------------------------------------


def test_failing_an_open_round_fails_its_job(recording: RecordingRuntime) -> None:
    rt = recording.runtime
    now = utcnow()
    later = now + timedelta(seconds=30)
    with session_scope(rt.sessions) as session:
        job = running_job(session, rt, now)
        rnd = _round(session, job.id, 1)
    recording.announced.clear()
    with session_scope(rt.sessions) as session:
        rounds.fail_round(session, rt, rnd.id, "too few updates", later)
        assert recording.announced == []
    assert recording.announced == [job.id]
    stored_round = recording.read(Round, rnd.id)
    assert stored_round.status == RoundStatus.FAILED
    assert (stored_round.failure_reason, stored_round.closed_at) == ("too few updates", later)
    stored = recording.read(Job, job.id)
    assert stored.status == JobStatus.FAILED and stored.finished_at == later
    assert stored.failure_reason == "round 1 failed: too few updates"


def test_failing_an_aggregating_round_fails_its_job(recording: RecordingRuntime) -> None:
    rt = recording.runtime
    now = utcnow()
    job, rnd = _aggregating(recording, now)
    with session_scope(rt.sessions) as session:
        rounds.fail_round(session, rt, rnd.id, "the aggregator gave up", now)
    assert recording.announced == [job.id]
    assert recording.read(Round, rnd.id).status == RoundStatus.FAILED
    stored = recording.read(Job, job.id)
    assert stored.status == JobStatus.FAILED
    assert stored.failure_reason == "round 1 failed: the aggregator gave up"


def test_a_closed_round_is_not_failed(recording: RecordingRuntime) -> None:
    rt = recording.runtime
    now = utcnow()
    job, rnd = _aggregating(recording, now)
    with session_scope(rt.sessions) as session:
        assert rounds.close_round(session, rt, rnd.id, _adapter(rnd.id), {}, now)
    recording.announced.clear()
    with session_scope(rt.sessions) as session:
        rounds.fail_round(session, rt, rnd.id, "a late failure", now)
    assert recording.announced == []
    stored_round = recording.read(Round, rnd.id)
    assert stored_round.status == RoundStatus.CLOSED and stored_round.failure_reason is None
    assert recording.read(Job, job.id).status == JobStatus.RUNNING


def test_failing_an_enrolling_job(recording: RecordingRuntime) -> None:
    rt = recording.runtime
    now = utcnow()
    with session_scope(rt.sessions) as session:
        job = enrolling_job(session, rt)
        rounds.fail_job(session, rt, job.id, "nobody came", now)
        assert recording.announced == []
    assert recording.announced == [job.id]
    stored = recording.read(Job, job.id)
    assert stored.status == JobStatus.FAILED
    assert (stored.failure_reason, stored.finished_at) == ("nobody came", now)


def test_failing_a_running_job(recording: RecordingRuntime) -> None:
    rt = recording.runtime
    now = utcnow()
    with session_scope(rt.sessions) as session:
        job = running_job(session, rt, now)
    recording.announced.clear()
    with session_scope(rt.sessions) as session:
        rounds.fail_job(session, rt, job.id, "the store is gone", now)
    assert recording.announced == [job.id]
    stored = recording.read(Job, job.id)
    assert stored.status == JobStatus.FAILED and stored.failure_reason == "the store is gone"


def _assert_cancelled(recording: RecordingRuntime, job_id: uuid.UUID, at: datetime) -> None:
    stored = recording.read(Job, job_id)
    assert stored.status == JobStatus.CANCELLED and stored.finished_at == at
    assert stored.failure_reason == "cancelled by an operator"


def test_a_job_that_ended_is_not_failed(recording: RecordingRuntime) -> None:
    rt = recording.runtime
    now = utcnow()
    with session_scope(rt.sessions) as session:
        job = running_job(session, rt, now)
        rounds.cancel_job(session, rt, job, now)
    recording.announced.clear()
    with session_scope(rt.sessions) as session:
        rounds.fail_job(session, rt, job.id, "too late", now + timedelta(seconds=1))
    assert recording.announced == []
    _assert_cancelled(recording, job.id, now)


# -- cancel -------------------------------------------------------------------------------


def test_cancelling_an_enrolling_job(recording: RecordingRuntime) -> None:
    rt = recording.runtime
    now = utcnow()
    with session_scope(rt.sessions) as session:
        job = enrolling_job(session, rt)
        cancelled = rounds.cancel_job(session, rt, job, now)
        assert cancelled.status == JobStatus.CANCELLED
        assert recording.announced == []
    assert recording.announced == [job.id]
    _assert_cancelled(recording, job.id, now)


def test_cancelling_a_running_job_fails_its_open_round(recording: RecordingRuntime) -> None:
    rt = recording.runtime
    now = utcnow()
    later = now + timedelta(seconds=30)
    with session_scope(rt.sessions) as session:
        job = running_job(session, rt, now)
    recording.announced.clear()
    with session_scope(rt.sessions) as session:
        rounds.cancel_job(session, rt, session.get_one(Job, job.id), later)
    assert recording.announced == [job.id]
    assert recording.read(Job, job.id).status == JobStatus.CANCELLED
    with session_scope(rt.sessions) as session:
        round0, round1 = _round(session, job.id, 0), _round(session, job.id, 1)
        assert round0.status == RoundStatus.CLOSED and round0.failure_reason is None
        assert round1.status == RoundStatus.FAILED
        assert (round1.failure_reason, round1.closed_at) == ("job cancelled", later)


def test_a_job_that_ended_cannot_be_cancelled(recording: RecordingRuntime) -> None:
    rt = recording.runtime
    now = utcnow()
    with session_scope(rt.sessions) as session:
        job = enrolling_job(session, rt)
        rounds.fail_job(session, rt, job.id, "nobody came", now)
    recording.announced.clear()
    with session_scope(rt.sessions) as session:
        job = session.get_one(Job, job.id)
        with pytest.raises(Conflict, match="is already failed; only enrolling or running"):
            rounds.cancel_job(session, rt, job, now + timedelta(seconds=1))
    assert recording.announced == []
    stored = recording.read(Job, job.id)
    assert stored.status == JobStatus.FAILED and stored.failure_reason == "nobody came"


@pytest.mark.postgres
def test_a_job_failed_meanwhile_cannot_be_cancelled_and_the_refusal_says_failed(
    recording_on_postgres: RecordingRuntime,
) -> None:
    recording = recording_on_postgres
    rt = recording.runtime
    now = utcnow()
    with session_scope(rt.sessions) as session:
        job = running_job(session, rt, now)
    with session_scope(rt.sessions) as operator:
        read = operator.get_one(Job, job.id)  # the cancel request reads the job
        with session_scope(rt.sessions) as deadline:
            rounds.fail_job(deadline, rt, job.id, "a round failed", now)
        with pytest.raises(Conflict, match="is already failed"):
            rounds.cancel_job(operator, rt, read, now)
    assert recording.read(Job, job.id).status == JobStatus.FAILED


# -- recovery -----------------------------------------------------------------------------


def test_recovery_redispatches_every_round_left_aggregating(recording: RecordingRuntime) -> None:
    rt = recording.runtime
    now = utcnow()
    _job, stuck = _aggregating(recording, now)
    with session_scope(rt.sessions) as session:
        running_job(session, rt, now)  # its round 1 is open: nothing to recover
    with session_scope(rt.sessions) as session:
        assert rounds.recover(session, rt) == 1
        assert recording.dispatched == []
    assert recording.dispatched == [stuck.id]


def test_recovery_starts_a_round_left_open_with_every_update_in(
    recording: RecordingRuntime,
) -> None:
    """A coordinator that died between a round's last acceptance and the count after it."""
    rt = recording.runtime
    now = utcnow()
    with session_scope(rt.sessions) as session:
        complete = _round(session, running_job(session, rt, now).id, 1)
        for update in _updates(session, complete.id):
            assert _accept(session, update, now)
        partial = _round(session, running_job(session, rt, now).id, 1)
        assert _accept(session, _updates(session, partial.id)[0], now)
    recording.dispatched.clear()
    with session_scope(rt.sessions) as session:
        assert rounds.recover(session, rt) == 1
    assert recording.dispatched == [complete.id]
    assert recording.read(Round, complete.id).status == RoundStatus.AGGREGATING
    assert recording.read(Round, partial.id).status == RoundStatus.OPEN
