"""A real coordinator process (``flaas serve`` under uvicorn) for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.support import OPERATOR_KEY, stats

# The coordinator runs from its own working directory: put this checkout first on its path,
# so it serves the code under test, not whichever checkout the environment installed.
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LiveCoordinator:
    """Starts, kills and restarts ``flaas serve`` on one database and one adapter store."""

    def __init__(
        self, database_url: str, workdir: Path, serve_args: tuple[str, ...] = (), **env: str
    ) -> None:
        self.serve_args = serve_args
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        self.log_path = workdir / "coordinator.log"
        self.env = {
            **os.environ,
            "FLAAS_DATABASE_URL": database_url,
            "FLAAS_STORAGE_URL": f"file://{workdir / 'adapters'}",
            "FLAAS_OPERATOR_KEYS": OPERATOR_KEY,
            "FLAAS_ENVIRONMENT": "production",
            "FLAAS_SCHEDULER_INTERVAL_S": "0.2",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "server.cli",
                "serve",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
                *self.serve_args,
            ],
            cwd=self.workdir,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"coordinator exited early:\n{self.log_path.read_text()[-4000:]}"
                )
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(
            f"coordinator not ready in {timeout} s:\n{self.log_path.read_text()[-4000:]}"
        )

    def kill(self) -> None:
        """SIGKILL: no shutdown hook runs, as in a crash or an OOM kill."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def operator(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {OPERATOR_KEY}"}, timeout=30.0
        )

    def client(self, credential: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {credential}"}, timeout=30.0
        )


@contextmanager
def running_coordinator(database_url: str, workdir: Path, **env: str) -> Iterator[LiveCoordinator]:
    """A started coordinator, stopped on exit."""
    coordinator = LiveCoordinator(database_url, workdir, **env)
    coordinator.start()
    try:
        yield coordinator
    finally:
        coordinator.stop()


def enrol_clients(http: Any, job: dict[str, Any], n: int, name: str = "device") -> list[str]:
    """Enrol ``n`` clients with spread-out statistics over ``http`` (an httpx client or a
    TestClient); returns their credentials."""
    credentials = []
    for i in range(n):
        response = http.post(
            f"/api/v1/jobs/{job['id']}/clients",
            json={"stats": stats(30 + 25 * i, entropy=0.1 + 0.3 * i), "name": f"{name}-{i}"},
            headers={"Authorization": f"Bearer {job['join_token']}"},
        )
        assert response.status_code == 201, response.text
        credentials.append(response.json()["credential"])
    return credentials


def wait_until(fetch: Any, predicate: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    value = fetch()
    while not predicate(value):
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met in {timeout} s; last value: {value}")
        time.sleep(0.1)
        value = fetch()
    return value
