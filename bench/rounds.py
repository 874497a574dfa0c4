"""Round turnaround: seconds from the last upload of a round to the next round being open.

Run: ``.venv/bin/python bench/rounds.py`` (``--ks 10 100`` for a quicker run). For each K it
starts a real coordinator (``flaas serve``) and, in the ``celery`` mode, Redis + N real
``flaas worker`` processes, creates a job with K clients and small adapters (2 modules of
64 x 64, r_max 8, plus a head), enrols the K clients concurrently, and then, each round, uploads
all K updates concurrently and measures from the completion of the last upload to the moment
``GET /api/v1/jobs/{id}`` reports the next round. The median over the rounds is printed.

Modes: ``embedded`` = the zero-configuration default (SQLite file, aggregation in the
coordinator); ``celery`` = production shape (PostgreSQL, a private ``redis-server``, N workers).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import torch
from safetensors.torch import save

ROOT = Path(__file__).resolve().parent.parent
OPERATOR_KEY = "bench-operator-key-0123456789"
MODULES = {"base_model.model.layer0.proj": [64, 64], "base_model.model.layer1.proj": [64, 64]}
HEAD = {"base_model.model.head.weight": [10, 64], "base_model.model.head.bias": [10]}


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
    import psycopg

    name = f"flaas_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin_url.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def deployment(mode: str, workers: int, workdir: Path, postgres: str) -> Iterator[str]:
    """A coordinator (and in ``celery`` mode Redis + workers); yields the coordinator URL."""
    processes: list[subprocess.Popen[bytes]] = []
    env = {
        **os.environ,
        "FLAAS_STORAGE_URL": f"file://{workdir / 'adapters'}",
        "FLAAS_OPERATOR_KEYS": OPERATOR_KEY,
        "FLAAS_ENVIRONMENT": "production",
        "FLAAS_SCHEDULER_INTERVAL_S": "1",
    }
    try:
        with postgres_database(postgres) if mode == "celery" else _null() as pg_url:
            if mode == "celery":
                redis_port = free_port()
                processes.append(
                    spawn(
                        ["redis-server", "--port", str(redis_port), "--save", ""],
                        env,
                        workdir / "redis.log",
                    )
                )
                env["FLAAS_DATABASE_URL"] = str(pg_url)
                env["FLAAS_BROKER_URL"] = f"redis://127.0.0.1:{redis_port}/0"
                migrate = [sys.executable, "-m", "server.cli", "migrate"]
                subprocess.run(migrate, cwd=ROOT, env=env, check=True, capture_output=True)
                for i in range(workers):
                    log = workdir / f"worker-{i}.log"
                    cmd = [sys.executable, "-m", "server.cli", "worker", f"--hostname=w{i}@%h"]
                    processes.append(spawn(cmd, env, log))
                    wait_for(lambda log=log: "ready." in log.read_text(), f"worker {i}")
            else:
                env["FLAAS_DATABASE_URL"] = f"sqlite:///{workdir / 'flaas.db'}"
            port = free_port()
            serve = [sys.executable, "-m", "server.cli", "serve", "--port", str(port)]
            processes.append(spawn([*serve, "--log-level", "warning"], env, workdir / "serve.log"))
            url = f"http://127.0.0.1:{port}"
            wait_for(lambda: _ready(url), "coordinator")
            yield url
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


def upload_body(rank: int, seed: int) -> bytes:
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for module, (d_in, d_out) in MODULES.items():
        tensors[f"{module}.lora_A.weight"] = torch.randn(rank, d_in, generator=g)
        tensors[f"{module}.lora_B.weight"] = torch.randn(d_out, rank, generator=g)
    for key, shape in HEAD.items():
        tensors[key] = torch.randn(*shape, generator=g)
    return save(tensors)


def run_job(url: str, k: int, rounds: int, threads: int) -> tuple[list[float], list[float], float]:
    """(turnaround seconds per round, aggregation seconds per round, enrolment seconds)."""
    spec = {
        "name": f"bench-k{k}",
        "modules": MODULES,
        "extra": HEAD,
        "strategy": "rbla",
        "rank": {"policy": "autorank", "r_min": 2, "r_max": 8},
        "rounds": rounds,
        "enrolment": {"min_clients": k, "target_clients": k, "timeout_s": 3600},
        "round": {"timeout_s": 3600},
        "seed": 1,
    }
    limits = httpx.Limits(max_connections=threads, max_keepalive_connections=threads)
    operator = {"Authorization": f"Bearer {OPERATOR_KEY}"}
    with (
        httpx.Client(base_url=url, timeout=120, limits=limits) as http,
        ThreadPoolExecutor(threads) as pool,
    ):
        job = http.post("/api/v1/jobs", json=spec, headers=operator).json()
        join = {"Authorization": f"Bearer {job['join_token']}"}

        def enrol(i: int) -> str:
            stats = {
                "n_samples": 20 + i % 50,
                "label_entropy": 0.1 + (i % 9) / 10,
                "gini_simpson": 0.1 + (i % 8) / 10,
                "loss_entropy": 0.4,
            }
            response = http.post(
                f"/api/v1/jobs/{job['id']}/clients", json={"stats": stats}, headers=join
            )
            response.raise_for_status()
            return str(response.json()["credential"])

        t0 = time.perf_counter()
        credentials = list(pool.map(enrol, range(k)))
        enrol_s = time.perf_counter() - t0
        print(f"    enrolled {k} clients in {enrol_s:.1f} s", file=sys.stderr, flush=True)
        bodies = {r: upload_body(r, seed=r) for r in range(1, 9)}

        def upload(credential: str) -> None:
            auth = {"Authorization": f"Bearer {credential}"}
            task = http.get("/api/v1/clients/me/task", headers=auth).json()
            assert task["action"] == "train", task
            response = http.put(
                task["upload_url"],
                content=bodies[task["rank"]],
                headers={**auth, "Flaas-Num-Samples": "10"},
            )
            assert response.status_code == 201, response.text

        turnaround, aggregation = [], []
        for number in range(1, rounds):
            wait_for(lambda n=number: _current(http, job["id"]) == n, f"round {number}", 600)
            # All but one concurrently, then the last alone: its response starts the clock.
            list(pool.map(upload, credentials[:-1]))
            upload(credentials[-1])
            last_upload = time.perf_counter()
            while _current(http, job["id"]) != number + 1:
                time.sleep(0.002)
            turnaround.append(time.perf_counter() - last_upload)
            detail = http.get(f"/api/v1/jobs/{job['id']}/rounds/{number}", headers=operator).json()
            aggregation.append(float(detail["aggregation"]["seconds"]))
        http.post(f"/api/v1/jobs/{job['id']}/cancel", headers=operator)
    return turnaround, aggregation, enrol_s


def _current(http: httpx.Client, job_id: str) -> int:
    operator = {"Authorization": f"Bearer {OPERATOR_KEY}"}
    return int(http.get(f"/api/v1/jobs/{job_id}", headers=operator).json()["current_round"])


def main() -> None:
    # A SIGTERM (e.g. from `timeout`) unwinds the deployments instead of orphaning them.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--modes", nargs="+", default=["embedded", "celery"])
    parser.add_argument("--rounds", type=int, default=6, help="rounds per job (rounds-1 samples)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=16, help="concurrent HTTP clients")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()

    rows = []
    for mode in args.modes:
        for k in args.ks:
            with (
                tempfile.TemporaryDirectory(prefix="flaas-bench-") as tmp,
                deployment(mode, args.workers, Path(tmp), args.postgres) as url,
            ):
                turnaround, aggregation, enrol_s = run_job(url, k, args.rounds, args.threads)
            label = (
                "embedded (SQLite)"
                if mode == "embedded"
                else f"Redis + {args.workers} workers (Postgres)"
            )
            rows.append(
                (
                    label,
                    k,
                    statistics.median(turnaround),
                    max(turnaround),
                    statistics.median(aggregation),
                    enrol_s,
                )
            )
            print(f"  {label:34} K={k:<5} median {rows[-1][2]:.3f} s", file=sys.stderr, flush=True)

    print(f"\n{'mode':34} {'K':>5} {'median s':>9} {'max s':>7} {'aggregate s':>12} {'enrol s':>8}")
    for label, k, median, worst, agg, enrol_s in rows:
        print(f"{label:34} {k:>5} {median:>9.3f} {worst:>7.3f} {agg:>12.3f} {enrol_s:>8.1f}")
    print(f"\n(median of {args.rounds - 1} rounds: last upload's response -> next round open)")


if __name__ == "__main__":
    main()
