"""``flaas serve --workers N``: several coordinator processes on one port.

Each process is a coordinator of its own (app, event loop, request threads, database pool):
they share the database, hear each other's transitions over Redis, and count their metrics in
one shared directory, so any process's ``/metrics`` is the sum of all. Celery workers
aggregate. SIGTERM to the parent stops every process.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from safetensors.torch import save

from tests.live import ROOT, LiveCoordinator, enrol_clients
from tests.support import adapter_tensors, job_spec
from tests.tasks.workers import Worker, redis_url_fixture, worker_env  # noqa: F401

pytestmark = pytest.mark.slow

PROCESSES = 2
CLIENTS, ROUNDS = 3, 2
TASK = "/api/v1/clients/me/task"


def children_of(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def accepted_uploads(url: str) -> float:
    """``flaas_uploads_accepted_total`` in one scrape, on a connection of its own."""
    text = httpx.get(f"{url}/metrics", headers={"Connection": "close"}).raise_for_status().text
    for family in text_string_to_metric_families(text):
        if family.name == "flaas_uploads_accepted":
            return sum(sample.value for sample in family.samples if sample.name.endswith("_total"))
    raise AssertionError("no flaas_uploads_accepted in the exposition")


def train_once(url: str, credential: str, seed: int) -> dict[str, Any]:
    """One client step on fresh connections (so the kernel may pick either process): ask for
    the task (long-polled), and upload an update when it says train."""
    headers = {"Authorization": f"Bearer {credential}", "Connection": "close"}
    task = httpx.get(f"{url}{TASK}", params={"wait": 10}, headers=headers, timeout=40).json()
    if task["action"] == "train":
        response = httpx.put(
            f"{url}{task['upload_url']}",
            content=save(adapter_tensors(task["rank"], seed=seed)),
            headers={**headers, "Flaas-Num-Samples": "20"},
        )
        assert response.status_code == 201, response.text
    return task


@pytest.mark.postgres
def test_processes_share_the_port_the_state_and_the_metrics(
    postgres_url: str, tmp_path: Path, redis_url: str
) -> None:
    storage = tmp_path / "adapters"
    shared = {"FLAAS_STORAGE_URL": f"file://{storage}", "FLAAS_BROKER_URL": redis_url}
    live = LiveCoordinator(postgres_url, tmp_path, ("--workers", str(PROCESSES)), **shared)
    worker = Worker(worker_env(postgres_url, storage, redis_url), tmp_path, "serve-processes")
    live.start()
    worker.start()
    try:
        assert live.process is not None
        assert len(children_of(live.process.pid)) == PROCESSES
        with live.operator() as http:
            spec = job_spec(rounds=ROUNDS)
            spec["enrolment"] = {"min_clients": CLIENTS, "target_clients": CLIENTS}
            job = http.post("/api/v1/jobs", json=spec).raise_for_status().json()
            credentials = enrol_clients(http, job, CLIENTS)
        deadline = time.monotonic() + 120
        status = "running"
        while status == "running":
            assert time.monotonic() < deadline, f"job still {status}:\n{worker.log()}"
            for i, credential in enumerate(credentials):
                train_once(live.url, credential, seed=i)
            with live.operator() as http:
                status = http.get(f"/api/v1/jobs/{job['id']}").json()["status"]
        assert status == "finished", status
        # Every scrape, whichever process answers it, counts every process's uploads.
        assert [accepted_uploads(live.url) for _ in range(6)] == [CLIENTS * ROUNDS] * 6
        children = children_of(live.process.pid)
        live.process.send_signal(signal.SIGTERM)
        assert live.process.wait(timeout=30) == 0
        assert not any(Path(f"/proc/{pid}").exists() for pid in children)
    finally:
        live.stop()
        worker.stop()


def test_several_processes_without_redis_are_refused_with_a_sentence(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "server.cli", "serve", "--workers", "2", "--no-migrate"],
        cwd=ROOT,
        env={"FLAAS_DATABASE_URL": f"sqlite:///{tmp_path / 'flaas.db'}", "PATH": "/usr/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "--workers 2 needs FLAAS_BROKER_URL=redis://" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
