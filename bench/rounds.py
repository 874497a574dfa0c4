"""Round turnaround: seconds from the last upload of a round to the next round being open.

Run: ``.venv/bin/python bench/rounds.py`` (``--ks 10 100`` for a quicker run). For each K it
starts a real coordinator (``flaas serve``) and, in the ``celery`` mode, Redis + N real
``flaas worker`` processes, creates a job with K clients and small adapters (2 modules of
64 x 64, r_max 8, plus a head), enrols the K clients concurrently, and then, each round, uploads
all K updates concurrently and measures from the completion of the last upload to the moment
``GET /api/v1/jobs/{id}`` reports the next round. The median over the rounds is printed.

Modes (``bench/deploy.py``): ``embedded`` = the zero-configuration default (SQLite file,
aggregation in the coordinator); ``celery`` = production shape (PostgreSQL, a private
``redis-server``, N workers); ``postgres`` = PostgreSQL with aggregation in the coordinator.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.deploy import (  # noqa: E402
    MODES,
    OPERATOR,
    client_stats,
    deployment,
    job_spec,
    upload_body,
    wait_for,
)


def run_job(url: str, k: int, rounds: int, threads: int) -> tuple[list[float], list[float], float]:
    """(turnaround seconds per round, aggregation seconds per round, enrolment seconds)."""
    spec = job_spec(f"bench-k{k}", k, rounds)
    limits = httpx.Limits(max_connections=threads, max_keepalive_connections=threads)
    with (
        httpx.Client(base_url=url, timeout=120, limits=limits) as http,
        ThreadPoolExecutor(threads) as pool,
    ):
        job = http.post("/api/v1/jobs", json=spec, headers=OPERATOR).json()
        join = {"Authorization": f"Bearer {job['join_token']}"}

        def enrol(i: int) -> str:
            response = http.post(
                f"/api/v1/jobs/{job['id']}/clients", json={"stats": client_stats(i)}, headers=join
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
            detail = http.get(f"/api/v1/jobs/{job['id']}/rounds/{number}", headers=OPERATOR).json()
            aggregation.append(float(detail["aggregation"]["seconds"]))
        http.post(f"/api/v1/jobs/{job['id']}/cancel", headers=OPERATOR)
    return turnaround, aggregation, enrol_s


def _current(http: httpx.Client, job_id: str) -> int:
    return int(http.get(f"/api/v1/jobs/{job_id}", headers=OPERATOR).json()["current_round"])


def main() -> None:
    # A SIGTERM (e.g. from `timeout`) unwinds the deployments instead of orphaning them.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=["embedded", "celery"])
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
                deployment(mode, Path(tmp), args.postgres, workers=args.workers) as deployed,
            ):
                turnaround, aggregation, enrol_s = run_job(
                    deployed.url, k, args.rounds, args.threads
                )
            label = {
                "embedded": "embedded (SQLite)",
                "postgres": "embedded aggregation (Postgres)",
                "celery": f"Redis + {args.workers} workers (Postgres)",
            }[mode]
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
