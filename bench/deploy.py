"""Deployments for the benches: a real coordinator (``flaas serve``) in a subprocess, on SQLite
or PostgreSQL, optionally with Redis + Celery workers; and the small job they run.

Shared by ``bench/rounds.py`` and ``bench/load.py``. Modes:

- ``embedded``: the zero-configuration default (SQLite file, aggregation in the coordinator);
- ``postgres``: a fresh PostgreSQL database, aggregation still in the coordinator (one process
  to measure);
- ``celery``: production shape (PostgreSQL, a private ``redis-server``, N ``flaas worker``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from safetensors.numpy import save

ROOT = Path(__file__).resolve().parent.parent
OPERATOR_KEY = "bench-operator-key-0123456789"
OPERATOR = {"Authorization": f"Bearer {OPERATOR_KEY}"}  # the headers of an operator request
MODES = ("embedded", "postgres", "celery")
# The benches' small job: 2 adapted modules of 64 x 64 (r_max 8) and a head.
MODULES = {"base_model.model.layer0.proj": [64, 64], "base_model.model.layer1.proj": [64, 64]}
HEAD = {"base_model.model.head.weight": [10, 64], "base_model.model.head.bias": [10]}


def job_spec(name: str, clients: int, rounds: int, **overrides: Any) -> dict[str, Any]:
    """The small job for ``clients`` clients: it starts when the last one enrols."""
    spec: dict[str, Any] = {
        "name": name,
        "modules": MODULES,
        "extra": HEAD,
        "strategy": "rbla",
        "rank": {"policy": "autorank", "r_min": 2, "r_max": 8},
        "rounds": rounds,
        "enrolment": {"min_clients": clients, "target_clients": clients, "timeout_s": 3600},
        "round": {"timeout_s": 3600},
        "seed": 1,
    }
    spec.update(overrides)
    return spec


def client_stats(i: int) -> dict[str, float]:
    """Varied but valid data-complexity statistics for client ``i`` (AutoRank spreads ranks)."""
    return {
        "n_samples": 20 + i % 50,
        "label_entropy": 0.1 + (i % 9) / 10,
        "gini_simpson": 0.1 + (i % 8) / 10,
        "loss_entropy": 0.4,
    }


def upload_body(rank: int, seed: int) -> bytes:
    """A valid update for the small job at ``rank``: safetensors of the right keys, shapes and
    dtype (float32), finite random values; no training."""
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {}
    for module, (d_in, d_out) in MODULES.items():
        tensors[f"{module}.lora_A.weight"] = rng.standard_normal((rank, d_in), np.float32)
        tensors[f"{module}.lora_B.weight"] = rng.standard_normal((d_out, rank), np.float32)
    for key, shape in HEAD.items():
        tensors[key] = rng.standard_normal(tuple(shape), np.float32)
    return save(tensors)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        args,
        cwd=ROOT,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def wait_for(check: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: {what} not ready in {timeout} s")
        time.sleep(0.05)


@contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    """A fresh database on the server of ``admin_url``, dropped afterwards."""
    import psycopg

    name = f"flaas_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin_url.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass(frozen=True)
class Deployment:
    url: str
    coordinator: subprocess.Popen[bytes]
    workdir: Path

    def coordinator_pids(self) -> list[int]:
        """The coordinator's processes: the one started, and those it forked
        (``flaas serve --workers N``)."""
        pid = self.coordinator.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return [pid, *map(int, children)]

    def coordinator_peak_rss_mb(self) -> float:
        """The coordinator processes' peak resident sets so far, summed (Linux ``VmHWM``)."""
        total = 0.0
        for pid in self.coordinator_pids():
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) / 1024
        return total

    def coordinator_cpu_s(self) -> float:
        """CPU seconds (user + system) the coordinator processes have used so far: unlike
        latencies, barely moved by other work on the machine."""
        return sum(process_cpu_s(pid) for pid in self.coordinator_pids())

    def cpu_shares(self) -> dict[str, Any]:
        """CPU seconds used so far by the coordinator, by this process (the bench's own
        clients), by each PostgreSQL process on the machine (by pid), and by the whole machine
        (``/proc/stat``: all but idle and iowait); ``cpu_used`` subtracts two."""
        postgres: dict[int, float] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with suppress(OSError):  # a backend may exit between the listing and the read
                    if (entry / "comm").read_text().strip() == "postgres":
                        postgres[int(entry.name)] = process_cpu_s(int(entry.name))
        busy = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        idle = int(busy[3]) + int(busy[4])
        return {
            "coordinator": self.coordinator_cpu_s(),
            "bench": time.process_time(),
            "postgres": postgres,
            "machine": (sum(map(int, busy)) - idle) / os.sysconf("SC_CLK_TCK"),
        }


def cpu_used(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    """Where the CPU went between two ``cpu_shares``: PostgreSQL counts the backends alive at
    the end (one that exited meanwhile took its CPU time with it)."""
    used = {k: after[k] - before[k] for k in ("coordinator", "bench", "machine")}
    used["postgres"] = sum(
        v - before["postgres"].get(pid, 0.0) for pid, v in after["postgres"].items()
    )
    return used


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used so far (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def deployment(
    mode: str,
    workdir: Path,
    postgres: str,
    *,
    workers: int = 2,
    coordinators: int = 1,
    settings: dict[str, str] | None = None,
) -> Iterator[Deployment]:
    """A coordinator (and in ``celery`` mode Redis + workers) for one bench run.

    ``coordinators`` processes serve (``flaas serve --workers``; ``celery`` mode only, which
    has the Redis they need). ``settings`` are extra ``FLAAS_*`` environment variables for
    every process.
    """
    if coordinators > 1 and mode != "celery":
        raise ValueError("several coordinator processes need the celery mode (Redis)")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    processes: list[subprocess.Popen[bytes]] = []
    env = {
        **os.environ,
        "FLAAS_STORAGE_URL": f"file://{workdir / 'adapters'}",
        "FLAAS_OPERATOR_KEYS": OPERATOR_KEY,
        "FLAAS_ENVIRONMENT": "production",
        "FLAAS_SCHEDULER_INTERVAL_S": "1",
        **(settings or {}),
    }
    try:
        with postgres_database(postgres) if mode != "embedded" else _null() as pg_url:
            if pg_url is None:
                env["FLAAS_DATABASE_URL"] = f"sqlite:///{workdir / 'flaas.db'}"
            else:
                env["FLAAS_DATABASE_URL"] = pg_url
            if mode == "celery":
                redis_port = free_port()
                processes.append(
                    spawn(
                        ["redis-server", "--port", str(redis_port), "--save", ""],
                        env,
                        workdir / "redis.log",
                    )
                )
                env["FLAAS_BROKER_URL"] = f"redis://127.0.0.1:{redis_port}/0"
                migrate = [sys.executable, "-m", "server.cli", "migrate"]
                subprocess.run(migrate, cwd=ROOT, env=env, check=True, capture_output=True)
                for i in range(workers):
                    log = workdir / f"worker-{i}.log"
                    cmd = [sys.executable, "-m", "server.cli", "worker", f"--hostname=w{i}@%h"]
                    processes.append(spawn(cmd, env, log))
                    wait_for(lambda log=log: "ready." in log.read_text(), f"worker {i}")
            port = free_port()
            serve = [sys.executable, "-m", "server.cli", "serve", "--port", str(port)]
            serve += ["--log-level", "warning", "--workers", str(coordinators)]
            coordinator = spawn(serve, env, workdir / "serve.log")
            processes.append(coordinator)
            url = f"http://127.0.0.1:{port}"
            wait_for(lambda: _ready(url), "coordinator")
            yield Deployment(url=url, coordinator=coordinator, workdir=workdir)
    finally:
        for process in reversed(processes):
            stop(process)


@contextmanager
def _null() -> Iterator[None]:
    yield None


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False
