"""Faults on the worker side, with real ``flaas worker`` processes, Redis and Postgres:
a worker killed mid-aggregation, a task delivered twice, Redis restarted between rounds.

The coordinator runs in-process (TestClient, broker dispatcher); workers are subprocesses.
Aggregation is slowed deterministically (``tests.tasks.slow_worker``: a sleep before folding
each update) so that a worker can be killed while it aggregates.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from server.aggregation import ClientUpdate
from server.db.models import (
    CLIENT_ORDER,
    AggregationShard,
    Client,
    GlobalAdapter,
    Job,
    Round,
    UpdateStatus,
)
from server.db.models import ClientUpdate as UpdateRow
from server.db.session import session_scope
from server.services.runtime import Runtime
from server.services.strategies import client_scale, strategy_for
from server.storage import global_key
from server.tasks.config import make_celery
from server.tasks.dispatch import CeleryDispatch
from server.tensors import load_adapter, save_adapter
from tests.support import coordinator, job_spec, settings_for
from tests.tasks.workers import (  # noqa: F401
    Driver,
    PrivateRedis,
    Worker,
    redis_url_fixture,
    worker_env,
)

pytestmark = pytest.mark.parametrize("database_url", ["postgres"], indirect=True)

TIME_LIMIT = "4"  # seconds: Redis redelivers a lost worker's task after ceil(4.4) + 1 = 6 s
DELAY = 0.4  # seconds per update folded: 3 updates keep a worker busy 1.2 s


class Deployment:
    def __init__(
        self, database_url: str, tmp_path: Path, broker_url: str, delay: float = DELAY
    ) -> None:
        self.tmp_path = tmp_path
        storage = tmp_path / "adapters"
        self.settings = settings_for(
            database_url, storage, broker_url=broker_url, aggregation_time_limit_s=int(TIME_LIMIT)
        )
        self.env = worker_env(
            database_url,
            storage,
            broker_url,
            FLAAS_AGGREGATION_TIME_LIMIT_S=TIME_LIMIT,
        )
        self.delay = delay
        self.workers: list[Worker] = []

    def worker(self, name: str, concurrency: int = 1) -> Worker:
        worker = Worker(self.env, self.tmp_path, name, concurrency, aggregation_delay_s=self.delay)
        self.workers.append(worker)
        return worker.start()

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()


@pytest.fixture
def deployment(database_url: str, tmp_path: Path, redis_url: str) -> Iterator[Deployment]:
    setup = Deployment(database_url, tmp_path, redis_url)
    try:
        yield setup
    finally:
        setup.close()


def runtime(api: TestClient) -> Runtime:
    rt: Runtime = api.app.state.runtime  # type: ignore[attr-defined]
    return rt


def start_round(api: TestClient, rounds: int = 1) -> tuple[Driver, dict[str, Any], str]:
    driver = Driver(api)
    job = driver.create(job_spec(rounds=rounds))
    credentials = driver.enrol(job, 3)
    task = {}
    for i, credential in enumerate(credentials):
        task = driver.upload(credential, seed=i)
    return driver, job, str(task["round_id"])


def shard(rt: Runtime, round_id: str) -> AggregationShard | None:
    with session_scope(rt.sessions) as session:
        return session.get(AggregationShard, (uuid.UUID(round_id), 0))


def undisturbed_sha256(rt: Runtime, round_id: str) -> str:
    """The global adapter an undisturbed aggregation of the stored updates produces."""
    with session_scope(rt.sessions) as session:
        rnd = session.get_one(Round, uuid.UUID(round_id))
        job = session.get_one(Job, rnd.job_id)
        rows = session.scalars(
            select(UpdateRow)
            .join(Client, Client.id == UpdateRow.client_id)
            .where(UpdateRow.round_id == rnd.id, UpdateRow.status == UpdateStatus.ACCEPTED)
            .order_by(*CLIENT_ORDER)  # the fold order of the coordinator
        ).all()
        with rt.store.local_path(global_key(job.id, 0)) as path:
            accumulator = strategy_for(job).accumulator(load_adapter(path))
        for row in rows:
            with rt.store.local_path(row.storage_key or "") as path:
                tensors = load_adapter(path)
            accumulator.add(
                ClientUpdate(
                    tensors, row.n_samples or 0, client_scale(job, row.rank), str(row.client_id)
                ),
                check_finite=False,
            )
        blob = save_adapter(accumulator.result())
    return hashlib.sha256(blob).hexdigest()


def wait_for(predicate: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_worker_killed_mid_aggregation_the_round_completes_once(deployment: Deployment) -> None:
    first = deployment.worker("first")
    with coordinator(deployment.settings) as api:
        rt = runtime(api)
        driver, job, round_id = start_round(api)
        wait_for(lambda: (s := shard(rt, round_id)) is not None and s.status == "running")
        time.sleep(0.3)  # well inside the 1.2 s aggregation
        first.kill()
        assert driver.round(job["id"], 1)["status"] == "aggregating"
        task_id = shard(rt, round_id).claimed_by  # type: ignore[union-attr]

        second = deployment.worker("second")
        # Redelivery takes the visibility timeout (6 s) after the second worker's start-up,
        # which a busy 2-core machine has been seen to stretch past 30 s: a generous bound,
        # and the second worker's log when even that passes.
        try:
            closed = driver.wait_round(job["id"], 1, timeout=120)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nsecond worker's log:\n{second.log()}") from None

        assert closed["global_adapter"]["n_updates"] == 3
        assert closed["global_adapter"]["sha256"] == undisturbed_sha256(rt, round_id)
        final = shard(rt, round_id)
        assert final is not None and final.status == "done"
        # the same message, redelivered (same task id): one lost attempt, one that finished
        assert final.attempts == 2 and final.claimed_by == task_id
        assert f"flaas.aggregate_round[{task_id}] received" in second.log()
        with session_scope(rt.sessions) as session:
            adapters = session.scalar(
                select(func.count())
                .select_from(GlobalAdapter)
                .join(Round)
                .where(Round.job_id == uuid.UUID(job["id"]))
            )
        assert adapters == 2  # round 0 and round 1, nothing duplicated
        assert driver.job(job["id"])["status"] == "finished"


def test_the_same_task_delivered_twice_aggregates_once(deployment: Deployment) -> None:
    with coordinator(deployment.settings) as api:
        rt = runtime(api)
        driver, job, round_id = start_round(api, rounds=2)  # queued: no worker is running yet
        duplicate = CeleryDispatch(make_celery(deployment.settings))
        duplicate(uuid.UUID(round_id))
        duplicate.close()
        worker = deployment.worker("pair", concurrency=2)  # both copies run at the same time

        closed = driver.wait_round(job["id"], 1)
        wait_for(lambda: worker.log().count("succeeded") >= 2)
        assert closed["global_adapter"]["sha256"] == undisturbed_sha256(rt, round_id)
        final = shard(rt, round_id)
        assert final is not None and final.attempts == 1
        log = worker.log()
        assert log.count("Task flaas.aggregate_round[") == 4, log  # 2 received, 2 succeeded
        assert "is busy: nothing to do" in log or "is not aggregating" in log, log
        rounds = api.get(f"/api/v1/jobs/{job['id']}/rounds", headers=driver.operator).json()
        assert [r["number"] for r in rounds["items"]] == [0, 1, 2]
        assert driver.round(job["id"], 2)["status"] == "open"


def test_redis_restarted_between_rounds_the_job_continues(
    database_url: str, tmp_path: Path
) -> None:
    broker = PrivateRedis(tmp_path)
    broker.start()
    setup = Deployment(database_url, tmp_path, broker.url, delay=0)
    try:
        setup.worker("survivor")
        with coordinator(setup.settings) as api:
            driver = Driver(api)
            job = driver.create(job_spec(rounds=2))
            credentials = driver.enrol(job, 3)
            for i, credential in enumerate(credentials):
                driver.upload(credential, seed=i)
            driver.wait_round(job["id"], 1)

            broker.stop()  # no persistence: everything Redis held is gone
            broker.start()

            for i, credential in enumerate(credentials):
                driver.upload(credential, seed=10 + i)
            closed = driver.wait_round(job["id"], 2, timeout=30)
            assert closed["global_adapter"]["n_updates"] == 3
            assert driver.job(job["id"])["status"] == "finished"
    finally:
        setup.close()
        broker.stop()
