"""Client updates (``services.uploads``): acceptance counting toward the round, the refusals of
an upload that can no longer count, the checks of its headers and the size cap, and the
Flaas-Metrics header."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select

from server.db.models import Client, ClientUpdate, Round, RoundStatus, UpdateStatus, utcnow
from server.db.session import session_scope
from server.errors import Conflict, Gone, InvalidRequest, PayloadTooLarge
from server.services import rounds
from server.services.uploads import (
    ReceivedUpdate,
    UploadBody,
    UploadTarget,
    accept_update,
    aggregate_if_complete,
    declare,
    parse_metrics,
    prepare_upload,
)
from tests.services.conftest import RecordingRuntime, running_job
from tests.support import adapter_bytes


def _targets(recording: RecordingRuntime) -> tuple[uuid.UUID, list[UploadTarget]]:
    """A running job's round 1 and an upload target for each of its three sampled clients."""
    rt = recording.runtime
    with session_scope(rt.sessions) as session:
        job = running_job(session, rt, utcnow())
        rnd = session.scalars(select(Round).where(Round.job_id == job.id, Round.number == 1)).one()
        clients = session.scalars(select(Client).where(Client.job_id == job.id))
        targets = [prepare_upload(session, client, rnd.id) for client in clients]
    recording.announced.clear()
    return rnd.id, targets


def _upload(
    recording: RecordingRuntime, target: UploadTarget, staging: Path, seed: int = 0
) -> tuple[ClientUpdate, bool]:
    body = adapter_bytes(target.rank, seed=seed)
    staged = staging / f"{uuid.uuid4().hex}.safetensors"
    staged.write_bytes(body)
    received = ReceivedUpdate(
        staged=staged,
        sha256=hashlib.sha256(body).hexdigest(),
        size_bytes=len(body),
        n_samples=10,
        metrics={},
        upload_seconds=0.1,
    )
    with session_scope(recording.runtime.sessions) as session:
        update, created = accept_update(session, recording.runtime, target, received)
    if created:  # as the upload route does, after the acceptance's commit
        aggregate_if_complete(recording.runtime, target)
    return update, created


def test_an_accepted_update_counts_and_the_last_one_starts_the_aggregation(
    recording: RecordingRuntime, tmp_path: Path
) -> None:
    round_id, targets = _targets(recording)
    for count, target in enumerate(targets, start=1):
        update, created = _upload(recording, target, tmp_path)
        assert created and update.status == UpdateStatus.ACCEPTED
        with session_scope(recording.runtime.sessions) as session:
            assert rounds.accepted_count(session, round_id) == count
        expected = RoundStatus.AGGREGATING if count == len(targets) else RoundStatus.OPEN
        assert recording.read(Round, round_id).status == expected
    assert recording.dispatched == [round_id]
    stored = recording.read(ClientUpdate, targets[0].update_id)
    assert stored.n_samples == 10 and stored.accepted_at is not None
    assert stored.storage_key is not None
    assert recording.runtime.store.get_bytes(stored.storage_key) == adapter_bytes(targets[0].rank)


def test_an_identical_retry_is_not_counted_again(
    recording: RecordingRuntime, tmp_path: Path
) -> None:
    round_id, targets = _targets(recording)
    first, _ = _upload(recording, targets[0], tmp_path)
    retry, created = _upload(recording, targets[0], tmp_path)
    assert not created and retry.id == first.id
    with session_scope(recording.runtime.sessions) as session:
        assert rounds.accepted_count(session, round_id) == 1


def test_a_different_body_after_acceptance_is_a_conflict(
    recording: RecordingRuntime, tmp_path: Path
) -> None:
    _round_id, targets = _targets(recording)
    first, _ = _upload(recording, targets[0], tmp_path)
    with pytest.raises(Conflict, match="accepted updates are immutable"):
        _upload(recording, targets[0], tmp_path, seed=1)
    assert recording.read(ClientUpdate, first.id).sha256 == first.sha256


def test_an_upload_to_a_round_no_longer_open_is_gone(
    recording: RecordingRuntime, tmp_path: Path
) -> None:
    rt = recording.runtime
    round_id, targets = _targets(recording)
    with session_scope(rt.sessions) as session:
        rounds.fail_round(session, rt, round_id, "the operator's test", utcnow())
    with pytest.raises(Gone, match="round 1 is failed"):
        _upload(recording, targets[0], tmp_path)
    assert recording.read(ClientUpdate, targets[0].update_id).status == UpdateStatus.PENDING
    assert recording.dispatched == []


def test_metrics_header_with_huge_numbers_or_deep_nesting_is_422() -> None:
    for raw in (
        '{"a": 1' + "0" * 400 + "}",
        '{"a": 1e999}',
        '{"a": ' + "[" * 2000 + "]" * 2000 + "}",
        "[" * 2040 + "]" * 2040,
    ):
        with pytest.raises(InvalidRequest):
            parse_metrics(raw, 4096)


def _declare(
    recording: RecordingRuntime,
    target: UploadTarget,
    content_length: str | None = None,
    content_sha256: str | None = None,
) -> bool:
    declared = declare(
        target,
        recording.runtime.settings,
        num_samples="10",
        metrics='{"loss": 0.5}',
        content_length=content_length,
        content_sha256=content_sha256,
    )
    assert (declared.n_samples, declared.metrics) == (10, {"loss": 0.5})
    return declared.identical_retry


def test_a_declared_length_over_the_cap_is_refused_before_the_body(
    recording: RecordingRuntime,
) -> None:
    _, targets = _targets(recording)
    cap = recording.runtime.settings.max_upload_bytes
    assert _declare(recording, targets[0], content_length=str(cap)) is False
    assert _declare(recording, targets[0], content_length="not a number") is False
    with pytest.raises(PayloadTooLarge, match=f"larger than the {cap}-byte limit"):
        _declare(recording, targets[0], content_length=str(cap + 1))


def test_only_the_accepted_updates_sha256_is_an_identical_retry(
    recording: RecordingRuntime, tmp_path: Path
) -> None:
    round_id, targets = _targets(recording)
    update, _ = _upload(recording, targets[0], tmp_path)
    with session_scope(recording.runtime.sessions) as session:
        client = session.get_one(Client, targets[0].client_id)
        accepted = prepare_upload(session, client, round_id)
    assert _declare(recording, accepted, content_sha256=update.sha256) is True
    assert _declare(recording, accepted, content_sha256="0" * 64) is False
    assert _declare(recording, accepted) is False
    assert _declare(recording, targets[1], content_sha256=update.sha256) is False


def test_the_body_is_refused_at_the_chunk_that_crosses_the_cap(
    recording: RecordingRuntime,
) -> None:
    cap = 4096
    body = UploadBody(recording.runtime.settings.model_copy(update={"max_upload_bytes": cap}))
    body.take(b"a" * (cap - 1))
    body.take(b"b")
    assert body.size == cap
    assert body.sha256 == hashlib.sha256(b"a" * (cap - 1) + b"b").hexdigest()
    with pytest.raises(PayloadTooLarge, match=f"larger than the {cap}-byte limit"):
        body.take(b"c")
