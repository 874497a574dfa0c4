"""A cohort enrolling at once against a live ``flaas serve`` (uvicorn): the coordinator stays up.

Issue 13: 50 concurrent enrolments on PostgreSQL wedged the whole coordinator. Each enrolment
locks the job row; a sync route's response was validated on a request thread *before* the
session dependency committed, so the lock holder queued for a thread behind every request
waiting on its lock (each holding a thread and a pooled connection): 500s from the pool,
time-outs, and ``/healthz`` and ``/readyz`` stopped answering.

Here 100 enrolments are released by one barrier while a prober times ``/healthz`` and
``/readyz``. Every enrolment must be answered 201 or 503 (a saturated coordinator says "retry"
with ``Retry-After``; never a 500 or a time-out), the 201s must be distinct clients that the
job counts, the probes must answer well under 10 s throughout, and retrying the 503s must
enrol everyone (the 100th enrolment starts the job, under the same lock).

Each run gets its own database (``database_url``: a fresh SQLite file, or a fresh
``flaas_test_*`` database on the PostgreSQL server), so runs on one host do not collide.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.live import LiveCoordinator, running_coordinator
from tests.support import job_spec, stats

pytestmark = pytest.mark.slow

COHORT = 100
# Long enough that a slow but live coordinator answers; a wedged one (the bug) does not.
REQUEST_TIMEOUT_S = 30.0
PROBE_TIMEOUT_S = 10.0
# "Well under 10 s": the probes need neither a request thread nor a pooled connection (they
# answer in milliseconds; the margin is for a CI machine short of CPU).
PROBE_LIMIT_S = 3.0
RETRY_ROUNDS = 30


@dataclass(frozen=True)
class Answer:
    """One request's outcome: an HTTP status, or ``None`` for a time-out or transport error."""

    status: int | None
    body: dict[str, Any]
    retry_after: str | None
    seconds: float
    error: str = ""


@dataclass(frozen=True)
class Probe:
    path: str
    status: int | None
    seconds: float
    in_flight: bool


@pytest.fixture
def live(database_url: str, tmp_path: Path) -> Iterator[LiveCoordinator]:
    with running_coordinator(database_url, tmp_path) as coordinator:
        yield coordinator


def enrol(http: httpx.Client, job: dict[str, Any], index: int) -> Answer:
    started = time.perf_counter()
    try:
        response = http.post(
            f"/api/v1/jobs/{job['id']}/clients",
            json={"stats": stats(20 + index, entropy=0.05 + 0.009 * index), "name": f"d-{index}"},
            headers={"Authorization": f"Bearer {job['join_token']}"},
        )
    except httpx.TransportError as exc:  # a time-out is the bug's symptom: record, not raise
        return Answer(None, {}, None, time.perf_counter() - started, type(exc).__name__)
    try:
        body = response.json()
    except ValueError:
        body = {"text": response.text[:200]}
    return Answer(
        response.status_code,
        body,
        response.headers.get("retry-after"),
        time.perf_counter() - started,
    )


def probe(http: httpx.Client, path: str, in_flight: bool) -> Probe:
    started = time.perf_counter()
    try:
        status: int | None = http.get(path).status_code
    except httpx.TransportError:
        status = None
    return Probe(path, status, time.perf_counter() - started, in_flight)


def enrol_together(live: LiveCoordinator, job: dict[str, Any]) -> tuple[list[Answer], list[Probe]]:
    """Release ``COHORT`` enrolments at once (one barrier) and probe health until they end."""
    barrier = threading.Barrier(COHORT + 1)
    answers: list[Answer | None] = [None] * COHORT
    done = threading.Event()
    probes: list[Probe] = []

    def device(index: int) -> None:
        with httpx.Client(base_url=live.url, timeout=REQUEST_TIMEOUT_S) as http:
            barrier.wait()
            answers[index] = enrol(http, job, index)

    def prober() -> None:
        with httpx.Client(base_url=live.url, timeout=PROBE_TIMEOUT_S) as http:
            barrier.wait()
            time.sleep(0.05)  # let the enrolments reach the coordinator first
            while not done.is_set():
                for path in ("/healthz", "/readyz"):
                    probes.append(probe(http, path, in_flight=not done.is_set()))
                time.sleep(0.1)

    threads = [threading.Thread(target=device, args=(i,)) for i in range(COHORT)]
    watcher = threading.Thread(target=prober)
    for thread in [*threads, watcher]:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    watcher.join()
    assert all(a is not None for a in answers)
    return [a for a in answers if a is not None], probes


def retry_until_enrolled(live: LiveCoordinator, job: dict[str, Any], indices: list[int]) -> None:
    """What a device does with a 503: wait ``Retry-After`` (capped) and enrol again."""
    with httpx.Client(base_url=live.url, timeout=REQUEST_TIMEOUT_S) as http:
        for index in indices:
            for _ in range(RETRY_ROUNDS):
                answer = enrol(http, job, index)
                if answer.status == 201:
                    break
                assert answer.status == 503, answer
                time.sleep(min(float(answer.retry_after or 1), 2.0))
            else:
                raise AssertionError(f"device {index} still refused after {RETRY_ROUNDS} tries")


def test_a_cohort_enrolling_at_once_never_wedges_the_coordinator(live: LiveCoordinator) -> None:
    spec = job_spec(enrolment={"min_clients": 1, "target_clients": COHORT, "timeout_s": 600})
    with live.operator() as http:
        job = http.post("/api/v1/jobs", json=spec).raise_for_status().json()

    answers, probes = enrol_together(live, job)

    outcomes = Counter(a.status if a.status is not None else a.error for a in answers)
    slowest = max(a.seconds for a in answers)
    probed = {
        path: [(p.status, round(p.seconds, 2)) for p in probes if p.path == path]
        for path in ("/healthz", "/readyz")
    }
    report = (
        f"outcomes {dict(outcomes)}, slowest enrolment {slowest:.2f} s, "
        f"probes (status, seconds) {probed}"
    )
    print(report)  # the numbers behind the assertions, for -s runs and the bench notes
    assert set(outcomes) <= {201, 503}, report
    for answer in answers:
        if answer.status == 503:
            assert answer.retry_after is not None and float(answer.retry_after) > 0, answer
    in_flight = [p for p in probes if p.in_flight]
    assert in_flight, "no health probe ran while the enrolments were in flight"
    for p in probes:
        assert p.status == 200 and p.seconds < PROBE_LIMIT_S, (p, report)

    enrolled = [a.body for a in answers if a.status == 201]
    ids = {e["client_id"] for e in enrolled}
    assert len(ids) == len(enrolled), "two enrolments answered with the same client"
    assert len({e["credential"] for e in enrolled}) == len(enrolled)
    with live.operator() as http:
        counted = http.get(f"/api/v1/jobs/{job['id']}").json()["enrolled_clients"]
        assert counted == len(enrolled), report
        listed = http.get(f"/api/v1/jobs/{job['id']}/clients", params={"limit": 500}).json()
        assert {c["id"] for c in listed["items"]} == ids

    retry_until_enrolled(live, job, [i for i, a in enumerate(answers) if a.status == 503])
    with live.operator() as http:
        final = http.get(f"/api/v1/jobs/{job['id']}").json()
    assert final["enrolled_clients"] == COHORT
    assert final["status"] == "running"  # the COHORT-th enrolment started the job

    with httpx.Client(base_url=live.url, timeout=PROBE_TIMEOUT_S) as http:
        for path in ("/healthz", "/readyz"):
            after = probe(http, path, in_flight=False)
            assert after.status == 200 and after.seconds < PROBE_LIMIT_S, after
