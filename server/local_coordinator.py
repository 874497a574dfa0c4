"""A coordinator of its own on this machine: ``flaas serve`` in a child process, on a free
local port.

What ``flaas demo`` runs: SQLite and adapter files under one directory, aggregation by the
embedded worker (no broker), a fresh random operator key. The coordinator gets a process of
its own rather than a thread of the caller's because the caller trains: in one process the
simulated clients' training and the coordinator's request threads take turns under one GIL
(a digits round took 0.43 s that way and 0.29 s with the coordinator in its own process,
README "Benchmarks"). The child dies with its parent where the OS allows it (Linux); its
warnings go to this process's stderr.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported inside the functions: `flaas --help` must stay light
    import httpx

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalCoordinator:
    """``flaas serve`` in a child process: ``with`` starts it (unless :meth:`start` already
    did, so that the caller can work while it starts), waits until it is ready, and stops it."""

    def __init__(self, data_dir: Path, port: int | None = None, log_level: str = "warning") -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.operator_key = secrets.token_urlsafe(24)
        self.log_level = log_level
        self.environment = {
            "FLAAS_ENVIRONMENT": "production",
            "FLAAS_DATABASE_URL": f"sqlite:///{data_dir / 'flaas.db'}",
            "FLAAS_STORAGE_URL": f"file://{data_dir / 'adapters'}",
            "FLAAS_OPERATOR_KEYS": self.operator_key,
            "FLAAS_BROKER_URL": "",  # aggregate in the coordinator: the demo runs no worker
            "FLAAS_PUBLIC_URL": self.url,
            "FLAAS_SCHEDULER_INTERVAL_S": "0.2",
        }
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> LocalCoordinator:
        """Start the coordinator process (it migrates its database); returns at once."""
        command = [sys.executable, "-m", "server.cli", "serve", "--host", "127.0.0.1"]
        command += ["--port", str(self.port), "--log-level", self.log_level]
        # The child serves this process's code, not whichever checkout the environment has.
        path = [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]
        env = {**os.environ, **self.environment, "PYTHONPATH": os.pathsep.join(filter(None, path))}
        self._process = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,  # its banner; the caller prints the URL itself
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,  # noqa: PLW1509
        )
        return self

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> LocalCoordinator:
        """Wait until the coordinator answers ``/readyz``; RuntimeError if it exits first or
        does not answer within ``timeout_s`` (its own error is on stderr above)."""
        import httpx

        if self._process is None:
            raise RuntimeError("the local coordinator was not started")
        deadline = time.monotonic() + timeout_s
        while True:
            code = self._process.poll()
            if code is not None:
                raise RuntimeError(f"the local coordinator exited with code {code} at start")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the local coordinator did not start within {timeout_s:g} s")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the coordinator (SIGTERM: uvicorn finishes the requests in flight), killing it
        if it has not exited within ``STOP_TIMEOUT_S``."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> LocalCoordinator:
        if self._process is None:
            self.start()
        return self.wait_ready()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def operator(self) -> httpx.Client:
        """An HTTP client authenticated with the coordinator's operator key."""
        import httpx

        return httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {self.operator_key}"},
            timeout=30.0,
        )


def _die_with_parent() -> None:
    """In the child, before it runs ``flaas serve``: SIGTERM when the parent dies, so a killed
    demo leaves no coordinator behind (Linux's ``PR_SET_PDEATHSIG``; it fires when the thread
    that started the child ends, which for the demo is its main thread)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
