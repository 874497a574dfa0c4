"""A production-shaped deployment: ``flaas serve`` with a broker, real Redis, a real
``flaas worker`` process and the real Postgres, running a multi-round job end to end."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from safetensors.torch import load

from tests.live import LiveCoordinator
from tests.support import job_spec
from tests.tasks.workers import Driver, Worker, live_http, redis_url_fixture  # noqa: F401


@pytest.fixture
def deployment(
    database_url: str, tmp_path: Path, redis_url: str
) -> Iterator[tuple[LiveCoordinator, Worker]]:
    live = LiveCoordinator(database_url, tmp_path, FLAAS_BROKER_URL=redis_url)
    live.start()
    worker = Worker(live.env, tmp_path, "e2e")
    try:
        worker.start()
        yield live, worker
    finally:
        worker.stop()
        live.stop()


def test_multi_round_job_through_a_celery_worker(
    deployment: tuple[LiveCoordinator, Worker],
) -> None:
    live, worker = deployment
    with live_http(live.url) as http:
        driver = Driver(http)
        job = driver.create(job_spec(rounds=3))
        credentials = driver.enrol(job, 3)
        hashes = []
        for number in (1, 2, 3):
            for i, credential in enumerate(credentials):
                driver.upload(credential, seed=10 * number + i)
            closed = driver.wait_round(job["id"], number)
            assert closed["global_adapter"]["n_updates"] == 3
            assert closed["aggregation"]["updates"] == 3
            hashes.append(closed["global_adapter"]["sha256"])
        final = driver.job(job["id"])
        assert final["status"] == "finished" and final["current_round"] == 3
        adapter = http.get(
            f"/api/v1/jobs/{job['id']}/adapter", params={"round": 3}, headers=driver.operator
        )
        assert load(adapter.content)["base_model.model.fc1.lora_A.weight"].shape == (8, 8)
    assert len(set(hashes)) == 3
    # The coordinator only dispatched: the worker process aggregated every round.
    log = worker.log()
    assert log.count("Task flaas.aggregate_round[") >= 6 and "succeeded" in log, log
    assert f"job {job['id']} finished: after 3 rounds" in log, log
