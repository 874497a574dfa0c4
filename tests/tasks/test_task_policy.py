"""The Celery configuration and task policy, the time-limit failure, the stale-round check and
the embedded worker running sharded rounds (no broker needed)."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from celery.exceptions import SoftTimeLimitExceeded
from fastapi.testclient import TestClient
from sqlalchemy import select

from server.config import Settings
from server.db.models import AggregationShard, Round, utcnow
from server.db.session import session_scope
from server.services import scheduler
from server.services.runtime import Runtime
from server.tasks import aggregation as tasks
from server.tasks import policy
from server.tasks.config import celery_config, make_celery
from tests.api.conftest import start_job
from tests.support import OPERATOR_KEY, coordinator, operator, settings_for
from tests.tasks.workers import Driver


def production(**values: object) -> Settings:
    return Settings(environment="production", operator_keys=[OPERATOR_KEY], **values)  # type: ignore[arg-type]


def test_celery_configuration_follows_the_settings() -> None:
    settings = production(broker_url="redis://example:6379/0", aggregation_time_limit_s=600)
    conf = celery_config(settings)
    assert conf["accept_content"] == ["json"] and conf["task_serializer"] == "json"
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["task_time_limit"] == 600 and conf["task_soft_time_limit"] == 540
    assert conf["broker_transport_options"]["visibility_timeout"] > 600
    assert conf["task_ignore_result"] and conf["result_backend"] is None
    assert conf["broker_connection_retry_on_startup"]
    # late acks and requeue-on-loss only where the task says it is idempotent
    assert not conf["task_acks_late"] and not conf["task_reject_on_worker_lost"]
    beat = conf["beat_schedule"]["flaas-check-deadlines"]
    assert beat["task"] == "flaas.check_deadlines"
    assert beat["schedule"] == settings.scheduler_interval_s


def test_round_steps_are_late_acked_and_requeued_only_because_idempotent() -> None:
    app = make_celery(production(broker_url="redis://example:6379/0"))
    for name in ("flaas.aggregate_round", "flaas.aggregate_shard", "flaas.combine_round"):
        task = app.tasks[name]
        assert task.acks_late and task.reject_on_worker_lost and task.ignore_result, name
    check = app.tasks["flaas.check_deadlines"]
    assert not check.acks_late and not check.reject_on_worker_lost


def test_empty_broker_url_means_embedded() -> None:
    assert production(broker_url="").broker_url is None


@pytest.fixture
def api(database_url: str, tmp_path: Path) -> Iterator[TestClient]:
    # The tests swap the runtime's dispatcher for a recorder; the embedded scheduler thread
    # keeps the original runtime, so it must not run its periodic check meanwhile.
    settings = settings_for(database_url, tmp_path / "adapters", scheduler_interval_s=60)
    with coordinator(settings) as client:
        yield client


class Recorder:
    """A dispatcher that records the rounds it is asked to aggregate; rounds here are never
    sharded, so a shard or combine step is a bug."""

    def __init__(self) -> None:
        self.sent: list[uuid.UUID] = []

    def __call__(self, round_id: uuid.UUID) -> None:
        self.sent.append(round_id)

    def shard(self, round_id: uuid.UUID, index: int) -> None:
        raise AssertionError(f"round {round_id} was sharded (step {index})")

    def combine(self, round_id: uuid.UUID) -> None:
        raise AssertionError(f"round {round_id} was combined")


def aggregating_round(api: TestClient) -> tuple[Runtime, Recorder, uuid.UUID, str]:
    """A job whose round 1 got its updates; the aggregation message went to a recorder."""
    recorder = Recorder()
    rt = dataclasses.replace(api.app.state.runtime, dispatch=recorder)  # type: ignore[attr-defined]
    api.app.state.runtime = rt  # type: ignore[attr-defined]
    job = start_job(api)
    driver = Driver(api)
    round_id = ""
    for client in job.clients:
        round_id = driver.upload(client["credential"], seed=1)["round_id"]
    assert recorder.sent == [uuid.UUID(round_id)]
    return rt, recorder, uuid.UUID(round_id), job.id


def test_soft_time_limit_fails_the_round_with_a_reason(
    api: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt, _, round_id, job_id = aggregating_round(api)

    def too_slow(*_args: object, **_kwargs: object) -> None:
        raise SoftTimeLimitExceeded()

    monkeypatch.setattr(policy, "worker_runtime", lambda: rt)
    monkeypatch.setattr(tasks.aggregation, "aggregate_round", too_slow)
    tasks.aggregate_round(round_id=str(round_id))
    detail = api.get(f"/api/v1/jobs/{job_id}/rounds/1", headers=operator(api)).json()
    assert detail["status"] == "failed"
    assert "exceeded its time limit of 900 s" in detail["failure_reason"]


def test_a_round_without_progress_is_requeued_once_per_window(api: TestClient) -> None:
    rt, recorder, round_id, _ = aggregating_round(api)
    window = 2 * rt.settings.broker_visibility_timeout_s
    now = utcnow()
    with session_scope(rt.sessions) as session:
        assert scheduler.redispatch_stale(session, rt, now) == 0  # fresh: nothing to do
    later = now + timedelta(seconds=window + 1)
    with session_scope(rt.sessions) as session:
        assert scheduler.redispatch_stale(session, rt, later) == 1
    assert recorder.sent == [round_id, round_id]
    with session_scope(rt.sessions) as session:  # the re-dispatch is recorded on the plan
        shards = list(session.scalars(select(AggregationShard)))
        assert len(shards) == 1 and shards[0].dispatched_at is not None
        assert scheduler.redispatch_stale(session, rt, later + timedelta(seconds=5)) == 0


def test_embedded_worker_runs_sharded_rounds(database_url: str, tmp_path: Path) -> None:
    settings = settings_for(
        database_url, tmp_path / "adapters", shard_threshold_bytes=1, shard_modules=2
    )
    with coordinator(settings) as api:
        job = start_job(api, rounds=2)
        driver = Driver(api)
        for number in (1, 2):
            for i, client in enumerate(job.clients):
                driver.upload(client["credential"], seed=number * 10 + i)
            closed = driver.wait_round(job.id, number)
            assert closed["aggregation"]["shards"] == 6
            assert closed["global_adapter"]["n_updates"] == 3
        assert driver.job(job.id)["status"] == "finished"
        rt: Runtime = api.app.state.runtime  # type: ignore[attr-defined]
        with session_scope(rt.sessions) as session:
            statuses = set(session.scalars(select(AggregationShard.status)))
            assert statuses == {"done"}
            assert len(list(session.scalars(select(Round)))) == 3
