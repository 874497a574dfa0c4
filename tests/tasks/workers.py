"""Real Celery workers (``flaas worker`` subprocesses), a private Redis, and job drivers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from safetensors.torch import save

from tests.live import enrol_clients, free_port
from tests.support import OPERATOR_KEY, adapter_tensors

SHARED_REDIS = "redis://127.0.0.1:6379/9"  # a database of its own, flushed by the fixture


def redis_or_skip(url: str) -> redis.Redis:
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.ConnectionError:
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(f"Redis is required in CI but unreachable at {url}")
        pytest.skip(f"Redis is not reachable at {url}")
    return client


@pytest.fixture(name="redis_url")
def redis_url_fixture() -> Iterator[str]:
    """The shared Redis, database 9, empty before and after the test."""
    client = redis_or_skip(SHARED_REDIS)
    client.flushdb()
    try:
        yield SHARED_REDIS
    finally:
        client.flushdb()


class PrivateRedis:
    """A throw-away ``redis-server`` (no persistence) that a test may stop and restart."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--save", "", "--appendonly", "no"],
            cwd=self.workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


def worker_env(database_url: str, storage: Path, broker_url: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "FLAAS_DATABASE_URL": database_url,
        "FLAAS_STORAGE_URL": f"file://{storage}",
        "FLAAS_BROKER_URL": broker_url,
        "FLAAS_OPERATOR_KEYS": OPERATOR_KEY,
        "FLAAS_ENVIRONMENT": "production",
        **extra,
    }


class Worker:
    """``flaas worker`` in its own process group (SIGKILL takes its pool children too).

    ``aggregation_delay_s`` > 0 runs it through ``tests.tasks.slow_worker``: a sleep before each
    update is folded, so that a test can kill the worker mid-aggregation.
    """

    def __init__(
        self,
        env: dict[str, str],
        workdir: Path,
        name: str,
        concurrency: int = 1,
        options: Sequence[str] = (),
        aggregation_delay_s: float = 0.0,
    ) -> None:
        self.env = env
        self.name = name
        self.concurrency = concurrency
        self.options = list(options)
        self.program = (
            ["tests.tasks.slow_worker", str(aggregation_delay_s)]
            if aggregation_delay_s
            else ["server.cli"]
        )
        self.log_path = workdir / f"worker-{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> Worker:
        self.log_path.write_bytes(b"")
        self.process = subprocess.Popen(
            [
                *(sys.executable, "-m", *self.program, "worker", "--hostname", f"{self.name}@%h"),
                f"--concurrency={self.concurrency}",
                *self.options,
            ],
            env=self.env,
            stdout=self.log_path.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while "ready." not in self.log_path.read_text(errors="replace"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start:\n{self.log()}")
            time.sleep(0.1)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def kill(self) -> None:
        """SIGKILL to the whole worker (main process and pool), as in a machine loss."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> int | None:
        """SIGTERM (a warm shutdown), SIGKILL after 20 s; the exit status, if it was running."""
        status = None
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                status = self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                status = self.process.wait()
        self.process = None
        return status


class Driver:
    """Drives a job over any HTTP client (a TestClient or httpx against a live coordinator)."""

    def __init__(self, http: Any) -> None:
        self.http = http
        self.operator = {"Authorization": f"Bearer {OPERATOR_KEY}"}

    def create(self, spec: dict[str, Any]) -> dict[str, Any]:
        response = self.http.post("/api/v1/jobs", json=spec, headers=self.operator)
        assert response.status_code == 201, response.text
        job: dict[str, Any] = response.json()
        return job

    def enrol(self, job: dict[str, Any], n: int) -> list[str]:
        return enrol_clients(self.http, job, n)

    def upload(self, credential: str, seed: int) -> dict[str, Any]:
        auth = {"Authorization": f"Bearer {credential}"}
        task = self.http.get("/api/v1/clients/me/task", headers=auth).json()
        assert task["action"] == "train", task
        response = self.http.put(
            task["upload_url"],
            content=save(adapter_tensors(task["rank"], seed=seed)),
            headers={**auth, "Flaas-Num-Samples": str(10 + seed % 7)},
        )
        assert response.status_code == 201, response.text
        return task

    def round(self, job_id: str, number: int) -> dict[str, Any]:
        response = self.http.get(f"/api/v1/jobs/{job_id}/rounds/{number}", headers=self.operator)
        assert response.status_code == 200, response.text
        detail: dict[str, Any] = response.json()
        return detail

    def job(self, job_id: str) -> dict[str, Any]:
        detail: dict[str, Any] = self.http.get(
            f"/api/v1/jobs/{job_id}", headers=self.operator
        ).json()
        return detail

    def wait_round(
        self, job_id: str, number: int, status: str = "closed", timeout: float = 30.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            detail = self.round(job_id, number)
            if detail["status"] == status:
                return detail
            if detail["status"] == "failed" or time.monotonic() > deadline:
                raise AssertionError(f"round {number} is {detail['status']}: {detail}")
            time.sleep(0.05)


def live_http(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, timeout=30.0)
