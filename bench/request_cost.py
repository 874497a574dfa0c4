"""Request cost: what one client request costs the coordinator, request by request.

Run: ``.venv/bin/python bench/request_cost.py --clients 1000 --requests 300``. It starts a
coordinator (``bench/deploy.py``, PostgreSQL by default), enrols a cohort of ``--clients``
(all sampled in round 1), then sends ``--requests`` requests of each kind one after the other
(no concurrency: the cost of a request, not of queueing), each kind from distinct clients
where a real fleet would (so last-seen writes are counted), and reports per request: the
coordinator's CPU milliseconds (``/proc``, user + system), the median wall milliseconds, and
with PostgreSQL the database transactions (``pg_stat_database``: commits and rollbacks of the
bench's database). Under load, CPU per request is what bounds a coordinator process: it runs
Python under one GIL (``bench/load.py`` measures the queueing on top).

Kinds: ``task`` (``GET /clients/me/task``, no wait, training task), ``task-same`` (the same
client polling again within ``FLAAS_LAST_SEEN_INTERVAL_S``), ``adapter`` (the adapter
download), ``upload`` (an accepted update), ``retry`` (its identical retry, answered 200),
``waiting`` (the client's task request after that: a wait, what a long-polled request renewed
costs before it waits), ``job`` (the operator's ``GET /jobs/{id}``). A client's last-seen
time is written at most once per ``FLAAS_LAST_SEEN_INTERVAL_S`` (60 s): a kind measured a
minute after the clients' previous write (``adapter``, ``upload``) includes that write, one
transaction per request.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.deploy import (  # noqa: E402
    MODES,
    OPERATOR,
    Deployment,
    client_stats,
    deployment,
    job_spec,
    upload_body,
)


def enrol(url: str, job_id: str, token: str, clients: int) -> list[str]:
    def one(i: int) -> str:
        with httpx.Client(base_url=url, timeout=60) as http:
            response = http.post(
                f"/api/v1/jobs/{job_id}/clients",
                json={"stats": client_stats(i), "name": f"c{i}"},
                headers={"Authorization": f"Bearer {token}"},
            )
            response.raise_for_status()
            return str(response.json()["credential"])

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(clients)))


def transactions(database_url: str | None) -> int | None:
    """Commits + rollbacks of the bench's database so far (None without PostgreSQL)."""
    if database_url is None:
        return None
    import psycopg

    # An idle backend flushes its statistics within PGSTAT_IDLE_INTERVAL (10 s).
    time.sleep(11)
    name = database_url.rsplit("/", 1)[1]
    with psycopg.connect(database_url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        row = conn.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s", [name]
        ).fetchone()
    return int(row[0]) if row else None


def measure(
    deploy: Deployment, database_url: str | None, kind: str, send: Any, n: int
) -> dict[str, Any]:
    walls = []
    xact0 = transactions(database_url)
    cpu0 = deploy.coordinator_cpu_s()
    for i in range(n):
        started = time.perf_counter()
        send(i)
        walls.append(time.perf_counter() - started)
    cpu = deploy.coordinator_cpu_s() - cpu0
    xact1 = transactions(database_url)
    # The probe's own transaction (the statistics read) runs in another database.
    return {
        "kind": kind,
        "n": n,
        "cpu_ms": round(1000 * cpu / n, 2),
        "wall_p50_ms": round(1000 * statistics.median(walls), 2),
        "transactions": None if xact0 is None or xact1 is None else round((xact1 - xact0) / n, 2),
    }


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    with (
        tempfile.TemporaryDirectory() as tmp,
        deployment(args.mode, Path(tmp), args.postgres) as deploy,
    ):
        database_url = None
        if args.mode != "embedded":
            database_url = deploy_database_url(deploy)
        http = httpx.Client(base_url=deploy.url, timeout=60)
        spec = job_spec("request-cost", args.clients, rounds=2)
        job = http.post("/api/v1/jobs", json=spec, headers=OPERATOR).json()
        started = time.perf_counter()
        credentials = enrol(deploy.url, job["id"], job["join_token"], args.clients)
        print(f"enrolled {args.clients} clients in {time.perf_counter() - started:.1f} s")
        auth = [{"Authorization": f"Bearer {c}"} for c in credentials]
        n = min(args.requests, args.clients - 1)  # the round must stay open
        tasks: list[dict[str, Any]] = [{}] * n
        bodies: list[bytes] = [b""] * n

        def task(i: int) -> None:
            response = http.get("/api/v1/clients/me/task", headers=auth[i])
            response.raise_for_status()
            tasks[i] = response.json()
            assert tasks[i]["action"] == "train", tasks[i]

        def task_same(i: int) -> None:
            http.get("/api/v1/clients/me/task", headers=auth[0]).raise_for_status()

        def adapter(i: int) -> None:
            http.get(tasks[i]["adapter_url"], headers=auth[i]).raise_for_status()

        def upload(i: int) -> None:
            bodies[i] = upload_body(tasks[i]["rank"], seed=i)
            headers = {**auth[i], "Flaas-Num-Samples": "10"}
            response = http.put(tasks[i]["upload_url"], content=bodies[i], headers=headers)
            assert response.status_code == 201, response.text

        def retry(i: int) -> None:
            headers = {**auth[i], "Flaas-Num-Samples": "10"}
            response = http.put(tasks[i]["upload_url"], content=bodies[i], headers=headers)
            assert response.status_code == 200, response.text

        def waiting(i: int) -> None:
            response = http.get("/api/v1/clients/me/task", headers=auth[i])
            assert response.json()["action"] == "wait", response.text

        def job_status(i: int) -> None:
            http.get(f"/api/v1/jobs/{job['id']}", headers=OPERATOR).raise_for_status()

        rows = []
        for kind, send in [
            ("task", task),
            ("task-same", task_same),
            ("adapter", adapter),
            ("upload", upload),
            ("retry", retry),
            ("waiting", waiting),
            ("job", job_status),
        ]:
            rows.append(measure(deploy, database_url, kind, send, n))
            print(json.dumps(rows[-1]))
        return rows


def deploy_database_url(deploy: Deployment) -> str:
    environ = Path(f"/proc/{deploy.coordinator.pid}/environ").read_bytes().split(b"\0")
    for entry in environ:
        if entry.startswith(b"FLAAS_DATABASE_URL="):
            return entry.split(b"=", 1)[1].decode()
    raise RuntimeError("the coordinator has no FLAAS_DATABASE_URL")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=300, help="requests of each kind")
    parser.add_argument("--mode", choices=MODES[:2], default="postgres")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--label", default="", help="written with each row to --out")
    parser.add_argument("--out", type=Path, default=None, help="append the rows as JSON lines")
    args = parser.parse_args()
    rows = run(args)
    print(f"\n{args.clients} clients, {args.mode}: per request")
    print(f"{'kind':10} {'CPU ms':>8} {'wall p50 ms':>12} {'transactions':>13}")
    for row in rows:
        xact = "-" if row["transactions"] is None else f"{row['transactions']:.2f}"
        print(f"{row['kind']:10} {row['cpu_ms']:8.2f} {row['wall_p50_ms']:12.2f} {xact:>13}")
    if args.out:
        with args.out.open("a") as out:
            for row in rows:
                out.write(json.dumps({**row, "clients": args.clients, "mode": args.mode,
                                      "label": args.label}) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
