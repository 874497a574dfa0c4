"""Last uploads of a round arriving together: exactly one of them starts the aggregation.

Each acceptance share-locks the round row (concurrent acceptances do not wait for each
other) and counts the accepted updates after its commit, so of two concurrent last uploads
(PostgreSQL runs them in parallel, READ COMMITTED) the later to commit sees the other's: a
complete round is never left open until its deadline, and the round's compare-and-set lets
one of them queue its aggregation.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from safetensors.torch import save

from tests.api.conftest import start_job
from tests.support import adapter_tensors, coordinator, operator, settings_for

CLIENTS = 4
JOBS = 4


@pytest.fixture
def api(database_url: str, tmp_path: Path) -> Iterator[TestClient]:
    # No periodic check during the test: only the uploads themselves may move the round.
    settings = settings_for(database_url, tmp_path / "adapters", scheduler_interval_s=60)
    with coordinator(settings) as client:
        yield client


def upload_together(
    api: TestClient, requests: list[tuple[str, bytes, dict[str, str]]]
) -> list[int]:
    """PUT every request at once (threads released by one barrier); their status codes."""
    barrier = threading.Barrier(len(requests))
    statuses: list[int] = []

    def upload(url: str, body: bytes, headers: dict[str, str]) -> None:
        barrier.wait()
        statuses.append(api.put(url, content=body, headers=headers).status_code)

    threads = [threading.Thread(target=upload, args=request) for request in requests]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


def test_concurrent_last_uploads_start_the_aggregation(api: TestClient) -> None:
    for _ in range(JOBS):
        job = start_job(api, enrolment={"min_clients": CLIENTS, "target_clients": CLIENTS})
        requests = []
        for index in range(CLIENTS):
            task = api.get("/api/v1/clients/me/task", headers=job.headers(index)).json()
            body = save(adapter_tensors(task["rank"], seed=index))
            headers = {**job.headers(index), "Flaas-Num-Samples": "10"}
            requests.append((task["upload_url"], body, headers))
        assert upload_together(api, requests) == [201] * CLIENTS
        detail = api.get(f"/api/v1/jobs/{job.id}/rounds/1", headers=operator(api)).json()
        assert detail["accepted"] == CLIENTS
        assert detail["status"] in {"aggregating", "closed"}, detail["status"]
