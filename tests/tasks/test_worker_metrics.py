"""``flaas worker --metrics-port``: a real worker serves what its pool counted, behind the
metrics token; and the stale sample files it clears at start."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from server.observability.multiprocess import MULTIPROC_ENV, remove_stale_samples
from tests.live import free_port
from tests.support import bearer, coordinator, job_spec, settings_for
from tests.tasks.workers import Driver, PrivateRedis, Worker, worker_env

TOKEN = "worker-scrape-token-0123456789"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[str]:
    """A Redis of this test's own: no other test's worker takes its tasks."""
    redis = PrivateRedis(tmp_path)
    redis.start()
    try:
        yield redis.url
    finally:
        redis.stop()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_worker_serves_its_pools_counters(database_url: str, tmp_path: Path, broker: str) -> None:
    storage = tmp_path / "adapters"
    env = worker_env(database_url, storage, broker, FLAAS_METRICS_TOKEN=TOKEN)
    env.pop(MULTIPROC_ENV, None)  # the worker makes a directory of its own
    port = free_port()
    options = ["--metrics-port", str(port), "--metrics-host", "127.0.0.1"]
    worker = Worker(env, tmp_path, "metrics", concurrency=1, options=options).start()
    url = f"http://127.0.0.1:{port}"
    try:
        with coordinator(settings_for(database_url, storage, broker_url=broker)) as api:
            driver = Driver(api)
            job = driver.create(job_spec(rounds=1))
            for i, credential in enumerate(driver.enrol(job, 3)):
                driver.upload(credential, seed=i)
            driver.wait_round(job["id"], 1)

        assert httpx.get(f"{url}/metrics").status_code == 401
        refused = httpx.get(f"{url}/metrics", headers=bearer("not-the-token"))
        assert refused.status_code == 401 and "FLAAS_METRICS_TOKEN" in refused.text
        assert httpx.get(f"{url}/other", headers=bearer(TOKEN)).status_code == 404
        scraped = httpx.get(f"{url}/metrics", headers=bearer(TOKEN))
        assert scraped.status_code == 200
        assert scraped.headers["content-type"].startswith("text/plain; version=")
    finally:
        status = worker.stop()

    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(scraped.text)
        for s in family.samples
    }
    # Counted in the pool's child process, summed by the worker's main process.
    assert samples[("flaas_rounds_closed_total", ())] >= 1
    strategy = (("strategy", job["strategy"]),)
    assert samples[("flaas_aggregation_duration_seconds_count", strategy)] >= 1
    assert samples[("flaas_jobs_ended_total", (("status", "finished"),))] >= 1
    assert not [name for name, _ in samples if name in {"flaas_jobs", "flaas_clients"}]
    # The exporter kept neither the worker alive nor its port (no process listens on it;
    # the scrapes' connections may linger in TIME_WAIT, as any server's do).
    assert status == 0, worker.log()
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))


def test_stale_sample_files_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    ended = subprocess.Popen([sys.executable, "-c", ""])
    ended.wait()
    live = os.getppid()
    names = [
        f"counter_{ended.pid}.db",  # a process that ended
        f"histogram_{os.getpid()}.db",  # this process, before it imports prometheus_client
        f"counter_{live}.db",  # a running process's
        "notes.txt",
    ]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    remove_stale_samples(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"counter_{live}.db", "notes.txt"])
