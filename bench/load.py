"""Load: many simulated clients against a real coordinator on PostgreSQL.

Run: ``.venv/bin/python bench/load.py --clients 300 --concurrency 100 --rounds 2``. It starts a
coordinator (``flaas serve``, ``bench/deploy.py``; ``--mode postgres`` by default: PostgreSQL,
aggregation in the coordinator, so one process holds all the server's memory), creates the
benches' small job for N clients and runs every client as an asyncio task (httpx, on a
connection of its own) that does what the SDK does, without training: enrol (at most C at a
time; the rounds are timed from the last enrolment, which starts the job), long-poll its task
(``?wait=``), download its adapter unless the task carried it (a small one does; run with
``--setting FLAAS_INLINE_ADAPTER_MAX_BYTES=0`` for a download each), upload a valid update
of its rank (random values, ``bench.deploy.upload_body``), and, for ``--retry-fraction`` of
the uploads, send the same update again as a retry (answered 200). At most C clients download
or upload at once (the concurrency); waiting task requests are outside that bound, as on a
real fleet.

It reports the errors (any answer but the expected one, or a request given up after 5
attempts; 503s and transport errors are retried, as the SDK does, and counted apart), an
exactly-once check (per round: the clients answered 201 are the round's accepted updates, each
once, and the global adapter counts their updates and samples), the coordinator's peak RSS,
its CPU time (which other work on the machine barely moves, unlike latencies; a progress line
every 15 s on stderr gives the round, the requests so far and the CPU use), the p50 /
p99 / max latency per request type and the latency of ``/healthz`` probed every 50 ms during
the load (from a process of its own), with the number of probes that took 100 ms or more.
Client-side latencies include this process's own scheduling: it shares the machine with the
coordinator.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import multiprocessing
import os
import random
import signal
import ssl
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.deploy import (  # noqa: E402
    MODES,
    OPERATOR,
    Deployment,
    client_stats,
    cpu_used,
    deployment,
    job_spec,
    upload_body,
)
from client_sdk.state import draw_credential  # noqa: E402

ATTEMPTS = 5  # per request, on a transport error or a 503
PROGRESS_S = 15.0
#: What issue 13 asks of /healthz throughout the load: the report counts the probes at or over it.
HEALTH_BOUND_S = 0.1
TLS = ssl.create_default_context()  # shared by the clients' connections (plain HTTP here)


@dataclass
class Record:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    shed: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # 503s, retried
    # transport errors (a reset or closed keep-alive connection), retried
    transport: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    # round number -> client index -> n_samples of each 201 answer
    accepted: dict[int, dict[int, list[int]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list))
    )
    retries_ok: int = 0

    def error(self, kind: str, what: str) -> None:
        self.errors[f"{kind}: {what}"[:160]] += 1


async def request(
    http: httpx.AsyncClient, record: Record, kind: str, method: str, url: str, **kw: Any
) -> httpx.Response | None:
    """One request, timed; retried after a transport error or a 503 (as the SDK does)."""
    for attempt in range(ATTEMPTS):
        started = time.perf_counter()
        try:
            response = await http.request(method, url, **kw)
        except httpx.TransportError as exc:
            record.transport[f"{kind} {type(exc).__name__}"] += 1
            await asyncio.sleep(0.5 * (attempt + 1))
            continue
        record.latencies[kind].append(time.perf_counter() - started)
        if response.status_code == 503:
            record.shed[kind] += 1
            await asyncio.sleep(float(response.headers.get("retry-after", "1")))
            continue
        return response
    return None


async def run_client(
    url: str,
    record: Record,
    transfers: asyncio.Semaphore,
    enrolment: Enrolment,
    index: int,
    args: argparse.Namespace,
) -> None:
    """One device: it enrols and then polls on one connection of its own, as a device does
    (opening 10,000 connections at once after the enrolment kept this process's event loop
    busy for a minute, and counted that minute in the first uploads' latency). One TLS context
    serves all of them (httpx builds one per client otherwise: 0.8 MB and 20 ms of CPU each,
    measured here)."""
    async with httpx.AsyncClient(
        base_url=url,
        timeout=httpx.Timeout(args.wait + 120),
        limits=httpx.Limits(max_connections=1),
        verify=TLS,
    ) as http:
        credential = await enrolment.enrol(http, index)
        await _client_loop(http, record, transfers, index, credential, args)


async def _client_loop(
    http: httpx.AsyncClient,
    record: Record,
    transfers: asyncio.Semaphore,
    index: int,
    credential: str,
    args: argparse.Namespace,
) -> None:
    auth = {"Authorization": f"Bearer {credential}"}
    rng = random.Random(index)
    while True:
        response = await request(
            http, record, "task", "GET", "/api/v1/clients/me/task",
            params={"wait": args.wait}, headers=auth,
        )  # fmt: skip
        if response is None or response.status_code != 200:
            record.error("task", "gave up" if response is None else str(response.status_code))
            return
        task = response.json()
        if task["action"] == "finished":
            return
        if task["action"] == "wait":
            await asyncio.sleep(task["retry_after"])
            continue
        n_samples = 10 + index % 7
        body = upload_body(task["rank"], seed=index * 1000 + task["round_number"])
        headers = {**auth, "Flaas-Num-Samples": str(n_samples)}
        async with transfers:
            if task.get("adapter") is None:  # as the SDK: a small adapter comes with the task
                adapter = await request(
                    http, record, "adapter", "GET", task["adapter_url"], headers=auth
                )
                if adapter is None or adapter.status_code != 200:
                    what = "gave up" if adapter is None else str(adapter.status_code)
                    record.error("adapter", what)
            if args.train_s:
                await asyncio.sleep(rng.uniform(0, 2 * args.train_s))
            upload = await request(
                http, record, "upload", "PUT", task["upload_url"], content=body, headers=headers
            )
            if upload is not None and upload.status_code in (200, 201):
                if upload.status_code == 201:
                    record.accepted[task["round_number"]][index].append(n_samples)
                if rng.random() < args.retry_fraction:
                    sha256 = upload.json()["sha256"]
                    retry_headers = {**headers, "Flaas-Content-Sha256": sha256}
                    retry = await request(
                        http, record, "retry", "PUT", task["upload_url"],
                        content=body, headers=retry_headers,
                    )  # fmt: skip
                    if retry is not None and retry.status_code == 200:
                        record.retries_ok += 1
                    else:
                        record.error("retry", "gave up" if retry is None else retry.text[:80])
            else:
                what = "gave up" if upload is None else f"{upload.status_code} {upload.text[:80]}"
                record.error("upload", what)


def probe_health(url: str, parent: int, stop: Any, out: Any) -> None:
    """``/healthz`` every 50 ms on a connection of its own, in a process of its own (this
    one's event loop runs every client, and would delay the probe itself): does the
    coordinator's event loop stay free? Puts the latencies on ``out`` once ``stop`` is set;
    gives up when its ``parent`` (the bench) has died."""
    latencies: list[float] = []
    with httpx.Client(base_url=url, timeout=30) as http:
        while not stop.is_set() and os.getppid() == parent:
            started = time.perf_counter()
            try:
                http.get("/healthz").raise_for_status()
                latencies.append(time.perf_counter() - started)
            except httpx.TransportError:  # a closed keep-alive connection, or no coordinator
                pass
            stop.wait(0.05)
    out.put(latencies)


async def report_progress(
    http: httpx.AsyncClient, deployed: Deployment, job_id: str, record: Record, stop: asyncio.Event
) -> None:
    """A line every ``PROGRESS_S`` on stderr: the round, the requests answered and given up so
    far, and the coordinator's CPU use since the last line."""
    started, cpu = time.perf_counter(), deployed.coordinator_cpu_s()
    last = started
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), PROGRESS_S)
        now, now_cpu = time.perf_counter(), deployed.coordinator_cpu_s()
        try:
            job = (await http.get(f"/api/v1/jobs/{job_id}", headers=OPERATOR)).json()
            where = f"round {job['current_round']} ({job['status']})"
        except httpx.HTTPError as exc:
            where = f"job unread ({type(exc).__name__})"
        done = ", ".join(f"{kind} {len(v)}" for kind, v in sorted(record.latencies.items()))
        print(
            f"  {time.perf_counter() - started:6.0f} s  {where}  {done}  errors "
            f"{sum(record.errors.values())}  coordinator CPU {(now_cpu - cpu) / (now - last):.0%}",
            file=sys.stderr,
            flush=True,
        )
        cpu, last = now_cpu, now


class Enrolment:
    """Enrols each client (at most ``concurrency`` at once) and tells when all ``n`` are in."""

    def __init__(self, record: Record, job: dict[str, Any], n: int, concurrency: int) -> None:
        self.record, self.job, self.n = record, job, n
        self.gate = asyncio.Semaphore(concurrency)
        self.enrolled = 0
        self.complete = asyncio.Event()

    async def enrol(self, http: httpx.AsyncClient, i: int) -> str:
        # A drawn credential, as the SDK sends: a retried enrolment whose answer was lost is
        # answered 200 with the same client.
        body = {"stats": client_stats(i), "name": f"load-{i}", "credential": draw_credential()}
        join = {"Authorization": f"Bearer {self.job['join_token']}"}
        async with self.gate:
            response = await request(
                http, self.record, "enrol", "POST", f"/api/v1/jobs/{self.job['id']}/clients",
                json=body, headers=join,
            )  # fmt: skip
        if response is None or response.status_code not in (200, 201):
            raise SystemExit(f"bench: enrolment {i} failed: {response and response.text}")
        self.enrolled += 1
        if self.enrolled == self.n:
            self.complete.set()
        return str(response.json()["credential"])


async def accepted_updates(http: httpx.AsyncClient, job_id: str, number: int) -> list[dict]:
    items: list[dict] = []
    while True:
        page = (
            await http.get(
                f"/api/v1/jobs/{job_id}/rounds/{number}/updates",
                params={"status": "accepted", "limit": 500, "offset": len(items)},
                headers=OPERATOR,
            )
        ).json()
        items += page["items"]
        if len(items) >= page["total"] or not page["items"]:
            return items


async def check_exactly_once(
    http: httpx.AsyncClient,
    record: Record,
    job_id: str,
    rounds: int,
    client_ids: list[str],
) -> list[str]:
    """Every 201 counted once: per round, the clients answered 201 are exactly the accepted
    updates, none twice, and the global adapter counts their updates and samples."""
    problems = []
    for number in range(1, rounds + 1):
        answered = record.accepted.get(number, {})
        twice = [i for i, samples in answered.items() if len(samples) > 1]
        if twice:
            problems.append(f"round {number}: {len(twice)} clients answered 201 more than once")
        rows = await accepted_updates(http, job_id, number)
        stored = sorted(row["client_id"] for row in rows)
        expected = sorted(client_ids[i] for i in answered)
        if stored != expected:
            problems.append(
                f"round {number}: {len(stored)} accepted updates stored, {len(expected)} "
                "answered 201, or not the same clients"
            )
        detail = (await http.get(f"/api/v1/jobs/{job_id}/rounds/{number}", headers=OPERATOR)).json()
        adapter = detail.get("global_adapter") or {}
        samples = sum(s[0] for s in answered.values())
        if adapter.get("n_updates") != len(answered) or adapter.get("total_samples") != samples:
            problems.append(
                f"round {number}: global adapter counts {adapter.get('n_updates')} updates / "
                f"{adapter.get('total_samples')} samples; 201s: {len(answered)} / {samples}"
            )
    return problems


def quantiles(values: list[float]) -> tuple[float, float, float]:
    ordered = sorted(values)
    if not ordered:
        return (float("nan"),) * 3
    p99 = ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]
    return statistics.median(ordered), p99, ordered[-1]


async def run(deployed: Deployment, args: argparse.Namespace) -> int:
    record = Record()
    limits = httpx.Limits(max_connections=args.concurrency + 10)
    timeout = httpx.Timeout(120)
    async with httpx.AsyncClient(base_url=deployed.url, timeout=timeout, limits=limits) as http:
        spec = job_spec(
            f"load-{args.clients}", args.clients, args.rounds, sampling={"fraction": args.fraction}
        )
        job = (await http.post("/api/v1/jobs", json=spec, headers=OPERATOR)).json()
        stop = asyncio.Event()
        spawn = multiprocessing.get_context("spawn")
        probe_stop, probe_out = spawn.Event(), spawn.Queue()
        prober = spawn.Process(
            target=probe_health, args=(deployed.url, os.getpid(), probe_stop, probe_out)
        )
        prober.start()
        progress = asyncio.create_task(report_progress(http, deployed, job["id"], record, stop))
        t0 = time.perf_counter()
        enrolment = Enrolment(record, job, args.clients, args.concurrency)
        transfers = asyncio.Semaphore(args.concurrency)
        devices = asyncio.gather(
            *(run_client(deployed.url, record, transfers, enrolment, i, args)
              for i in range(args.clients))
        )  # fmt: skip
        await asyncio.wait(
            [asyncio.ensure_future(enrolment.complete.wait()), devices],
            return_when=asyncio.FIRST_COMPLETED,
        )
        if not enrolment.complete.is_set():
            await devices  # raises what stopped the clients
        enrol_s = time.perf_counter() - t0
        print(f"  enrolled {args.clients} clients in {enrol_s:.1f} s", file=sys.stderr, flush=True)
        shares0 = deployed.cpu_shares()
        cpu0 = shares0["coordinator"]
        t1 = time.perf_counter()
        await devices
        rounds_s = time.perf_counter() - t1
        shares = cpu_used(shares0, deployed.cpu_shares())
        rounds_cpu_s = shares["coordinator"]
        stop.set()
        probe_stop.set()
        health: list[float] = probe_out.get(timeout=60)
        prober.join()
        await progress
        status = (await http.get(f"/api/v1/jobs/{job['id']}", headers=OPERATOR)).json()
        clients: list[str] = [""] * args.clients
        offset = 0
        while offset < args.clients:
            page = (
                await http.get(
                    f"/api/v1/jobs/{job['id']}/clients",
                    params={"limit": 500, "offset": offset},
                    headers=OPERATOR,
                )
            ).json()
            for item in page["items"]:
                clients[int(item["name"].split("-")[1])] = item["id"]
            offset += len(page["items"]) or args.clients
        problems = await check_exactly_once(http, record, job["id"], args.rounds, clients)
    rss = deployed.coordinator_peak_rss_mb()

    print(
        f"\n{args.clients} clients x {args.rounds} rounds, concurrency {args.concurrency}, "
        f"mode {args.mode} ({args.coordinators} coordinator processes), task wait {args.wait} s, "
        f"{args.fraction:.0%} sampled per round: job {status['status']} "
        f"(round {status['current_round']}), enrolment {enrol_s:.1f} s, rounds {rounds_s:.1f} s"
    )
    errors = sum(record.errors.values())
    print(f"errors: {errors}" + "".join(f"\n  {n} x {what}" for what, n in record.errors.items()))
    if record.shed:
        print("503 (retried): " + ", ".join(f"{k} {n}" for k, n in record.shed.items()))
    if record.transport:
        print(
            "transport errors (retried): "
            + ", ".join(f"{k} {n}" for k, n in record.transport.items())
        )
    print(f"identical retries answered 200: {record.retries_ok}")
    print("exactly-once: " + ("OK" if not problems else "FAILED\n  " + "\n  ".join(problems)))
    print(f"coordinator peak RSS: {rss:.0f} MB")
    requests = sum(len(record.latencies[k]) for k in ("task", "adapter", "upload", "retry"))
    print(
        f"coordinator CPU during the rounds: {rounds_cpu_s:.1f} s for {requests} requests "
        f"({1e3 * rounds_cpu_s / max(1, requests):.1f} ms per request); enrolment "
        f"{cpu0:.1f} s including start-up"
    )
    cores = os.cpu_count() or 1
    other = shares["machine"] - shares["coordinator"] - shares["bench"] - shares["postgres"]
    print(
        f"machine CPU during the rounds: {shares['machine']:.1f} s of {cores * rounds_s:.1f} "
        f"({cores} cores busy {shares['machine'] / (cores * rounds_s):.0%}): coordinator "
        f"{rounds_cpu_s:.1f}, load generator {shares['bench']:.1f}, PostgreSQL backends "
        f"{shares['postgres']:.1f}, other {other:.1f} (the health probe, Redis, workers, the OS)"
    )
    print(f"\n{'request':10} {'count':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for kind in ("enrol", "task", "adapter", "upload", "retry"):
        values = record.latencies.get(kind, [])
        if values:
            p50, p99, top = quantiles(values)
            print(
                f"{kind:10} {len(values):>7} {p50 * 1e3:>8.1f} {p99 * 1e3:>8.1f} {top * 1e3:>8.1f}"
            )
    p50, p99, top = quantiles(health)
    print(f"{'/healthz':10} {len(health):>7} {p50 * 1e3:>8.1f} {p99 * 1e3:>8.1f} {top * 1e3:>8.1f}")
    slow = sum(1 for latency in health if latency >= HEALTH_BOUND_S)
    print(f"(/healthz: {slow} of {len(health)} probes took {HEALTH_BOUND_S * 1e3:.0f} ms or more)")
    print("(task requests long-poll: their latency includes the wait for the round to open)")
    ok = errors == 0 and not problems and status["status"] == "finished"
    return 0 if ok else 1


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--wait", type=float, default=20.0, help="task long-poll seconds")
    parser.add_argument(
        "--fraction", type=float, default=1.0, help="clients sampled per round (a fraction)"
    )
    parser.add_argument("--retry-fraction", type=float, default=0.1)
    parser.add_argument("--train-s", type=float, default=0.0, help="mean simulated training")
    parser.add_argument("--mode", choices=MODES, default="postgres")
    parser.add_argument("--workers", type=int, default=2, help="Celery workers (celery mode)")
    parser.add_argument(
        "--coordinators",
        type=int,
        default=1,
        help="coordinator processes (flaas serve --workers; celery mode)",
    )
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an extra FLAAS_* variable for the coordinator (repeatable)",
    )
    args = parser.parse_args()
    settings = dict(s.split("=", 1) for s in args.setting)
    # Every client may hold a long-polled task request at once.
    settings.setdefault("FLAAS_TASK_WAITERS_MAX", str(max(1000, args.clients)))
    with (
        tempfile.TemporaryDirectory(prefix="flaas-load-") as tmp,
        deployment(
            args.mode,
            Path(tmp),
            args.postgres,
            workers=args.workers,
            coordinators=args.coordinators,
            settings=settings,
        ) as deployed,
    ):
        code = asyncio.run(run(deployed, args))
    sys.exit(code)


if __name__ == "__main__":
    main()
