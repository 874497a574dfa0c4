"""Long-polled task requests (``GET /api/v1/clients/me/task?wait=N``) against real coordinators.

A waiting client is told at once when its answer changes (the job starts, its round opens),
in one request, whichever process made the change: this coordinator, another coordinator
process on the same database, or a Celery worker closing a round (over Redis pub/sub). A wait
nobody ends returns after N seconds; a flood of waiters beyond the limit is answered at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from safetensors.torch import save

from client_sdk import Client
from client_sdk.api import ApiClient
from client_sdk.rounds import LocalUpdate, RoundContext
from tests.live import LiveCoordinator, enrol_clients, running_coordinator
from tests.support import adapter_tensors, job_spec, stats
from tests.tasks.workers import Worker, redis_or_skip, worker_env

pytestmark = pytest.mark.slow

NOTIFY_REDIS = "redis://127.0.0.1:6379/11"  # a database of its own, flushed by the fixture
# "Promptly": well under the old 2 s enrolment poll, with room for a busy CI machine.
PROMPT_S = 1.0
TASK = "/api/v1/clients/me/task"


@pytest.fixture
def live(database_url: str, tmp_path: Path) -> Iterator[LiveCoordinator]:
    with running_coordinator(database_url, tmp_path) as coordinator:
        yield coordinator


class Asked:
    """One task request in a thread: its answer and when it came."""

    def __init__(self, url: str, credential: str, wait: float) -> None:
        self.answer: dict[str, Any] = {}
        self.answered_at = 0.0
        self.started_at = time.monotonic()
        self._thread = threading.Thread(target=self._ask, args=(url, credential, wait))
        self._thread.start()

    def _ask(self, url: str, credential: str, wait: float) -> None:
        headers = {"Authorization": f"Bearer {credential}"}
        with httpx.Client(base_url=url, headers=headers, timeout=wait + 30) as http:
            self.answer = http.get(TASK, params={"wait": wait}).raise_for_status().json()
        self.answered_at = time.monotonic()

    def result(self) -> dict[str, Any]:
        self._thread.join(timeout=90)
        assert not self._thread.is_alive(), "the task request never came back"
        return self.answer


def test_a_waiting_client_gets_train_as_soon_as_the_last_enrolment_starts_the_job(
    live: LiveCoordinator,
) -> None:
    with live.operator() as http:
        job = http.post("/api/v1/jobs", json=job_spec()).raise_for_status().json()
        credentials = enrol_clients(http, job, 2)
    asked = Asked(live.url, credentials[0], wait=20)
    time.sleep(0.5)  # the request is waiting on the coordinator
    with live.operator() as http:
        enrol_clients(http, job, 1, name="last")  # the third starts the job: round 1 opens
    enrolled_at = time.monotonic()

    answer = asked.result()
    assert answer["action"] == "train" and answer["round_number"] == 1, answer
    assert asked.answered_at - asked.started_at >= 0.4, "answered before there was work"
    assert asked.answered_at - enrolled_at < PROMPT_S, asked.answered_at - enrolled_at


def test_a_wait_nothing_ends_returns_wait_after_n_seconds(live: LiveCoordinator) -> None:
    with live.operator() as http:
        job = http.post("/api/v1/jobs", json=job_spec()).raise_for_status().json()
        (credential,) = enrol_clients(http, job, 1)
    with live.client(credential) as http:
        started = time.monotonic()
        held = http.get(TASK, params={"wait": 1.5}).json()
        waited = time.monotonic() - started
        assert held["action"] == "wait" and held["retry_after"] == 0, held
        assert 1.5 <= waited < 1.5 + PROMPT_S, waited

        # An old client (no wait) is answered at once and told when to poll again.
        started = time.monotonic()
        polled = http.get(TASK).json()
        assert time.monotonic() - started < PROMPT_S
        assert polled["action"] == "wait" and polled["retry_after"] > 0, polled
        assert http.get(TASK, params={"wait": -1}).status_code == 422


def test_waiters_beyond_the_limit_are_answered_at_once_and_waits_are_cut_to_the_maximum(
    database_url: str, tmp_path: Path
) -> None:
    env = {"FLAAS_TASK_WAITERS_MAX": "2", "FLAAS_TASK_WAIT_MAX_S": "2"}
    with running_coordinator(database_url, tmp_path, **env) as live:
        with live.operator() as http:
            job = http.post("/api/v1/jobs", json=job_spec()).raise_for_status().json()
            credentials = enrol_clients(http, job, 2)  # 3 needed: the job stays enrolling
        waiting = [Asked(live.url, credential, wait=60) for credential in credentials]
        time.sleep(0.5)  # both hold the limit's two places
        with live.client(credentials[0]) as http:
            started = time.monotonic()
            refused = http.get(TASK, params={"wait": 60}).json()
            assert time.monotonic() - started < PROMPT_S, "a waiter beyond the limit waited"
        assert refused["action"] == "wait" and refused["retry_after"] > 0, refused
        for asked in waiting:
            answer = asked.result()
            assert answer["action"] == "wait" and answer["retry_after"] == 0, answer
            # Asked for 60 s, cut to FLAAS_TASK_WAIT_MAX_S.
            assert 2.0 <= asked.answered_at - asked.started_at < 2.0 + PROMPT_S


@pytest.fixture
def notify_redis() -> Iterator[str]:
    client = redis_or_skip(NOTIFY_REDIS)
    client.flushdb()
    try:
        yield NOTIFY_REDIS
    finally:
        client.flushdb()


def upload(live: LiveCoordinator, credential: str, task: dict[str, Any], seed: int) -> None:
    with live.client(credential) as http:
        response = http.put(
            task["upload_url"],
            content=save(adapter_tensors(task["rank"], seed=seed)),
            headers={"Flaas-Num-Samples": "20"},
        )
    assert response.status_code == 201, response.text


def test_a_client_waiting_on_one_coordinator_is_woken_by_other_processes(
    database_url: str, tmp_path: Path, notify_redis: str
) -> None:
    """Coordinator B starts the job (round 1 opens), and a Celery worker closes round 1 (round
    2 opens): a client long-polling on coordinator A hears both over Redis, one request each."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    storage = tmp_path / "adapters"
    shared = {"FLAAS_STORAGE_URL": f"file://{storage}", "FLAAS_BROKER_URL": notify_redis}
    spec = job_spec(enrolment={"min_clients": 2, "target_clients": 2, "timeout_s": 300})
    worker = Worker(worker_env(database_url, storage, notify_redis), tmp_path, "notify")
    with (
        running_coordinator(database_url, tmp_path / "a", **shared) as a,
        running_coordinator(database_url, tmp_path / "b", **shared) as b,
    ):
        worker.start()
        try:
            with b.operator() as http:
                job = http.post("/api/v1/jobs", json=spec).raise_for_status().json()
                (mine,) = enrol_clients(http, job, 1)
            asked = Asked(a.url, mine, wait=30)
            time.sleep(0.5)
            with b.operator() as http:
                (other,) = enrol_clients(http, job, 1, name="other")  # starts the job on B
            changed_at = time.monotonic()
            first = asked.result()
            assert first["action"] == "train" and first["round_number"] == 1, first
            assert asked.answered_at - changed_at < PROMPT_S, asked.answered_at - changed_at

            upload(b, mine, first, seed=1)
            asked = Asked(a.url, mine, wait=30)  # "already accepted": it waits on A
            time.sleep(0.5)
            with b.client(other) as http:
                upload(b, other, http.get(TASK).json(), seed=2)  # the worker closes round 1
            second = asked.result()
            with b.operator() as http:
                closed = http.get(f"/api/v1/jobs/{job['id']}/rounds/1").json()
            assert closed["status"] == "closed", closed
            assert second["action"] == "train" and second["round_number"] == 2, second
            # Woken by the worker's announcement, not by the end of the 30 s wait.
            assert asked.answered_at - asked.started_at < 15, worker.log()
        finally:
            worker.stop()


class CountingApi(ApiClient):
    """The SDK's HTTP client, counting its task requests."""

    def __init__(self, server: str) -> None:
        super().__init__(server)
        self.tasks = 0

    def task(self, wait: float = 0.0) -> dict[str, Any]:
        self.tasks += 1
        return super().task(wait)


def test_the_sdk_loop_asks_about_once_per_change_not_once_per_second(
    live: LiveCoordinator, tmp_path: Path
) -> None:
    """Three SDK clients, one of them slow (2 s a round): the fast ones wait about 2 s per
    round, which polling every second would spend in two or three task requests each; long-
    polling spends one (the wait, woken when the next round opens), plus the train answers."""
    rounds = 3
    spec = job_spec(rounds=rounds)
    with live.operator() as http:
        job = http.post("/api/v1/jobs", json=spec).raise_for_status().json()

    def train(slow: bool) -> Any:
        def run(ctx: RoundContext) -> LocalUpdate:
            if slow:
                time.sleep(2.0)
            update = save(adapter_tensors(ctx.task.rank, seed=ctx.task.round_number))
            return LocalUpdate(update=update, n_samples=20)

        return run

    apis = [CountingApi(live.url) for _ in range(3)]
    results: list[Any] = [None] * 3

    def device(index: int) -> None:
        client = Client(
            live.url,
            job["id"],
            join_token=job["join_token"],
            state_dir=tmp_path / f"device-{index}",
            api=apis[index],
        )
        results[index] = client.run(train(slow=index == 0), stats=stats(40 + 10 * index))

    threads = [threading.Thread(target=device, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert all(r is not None and r.status == "finished" for r in results), results
    assert all(r.accepted_rounds == list(range(1, rounds + 1)) for r in results), results
    counts = [api.tasks for api in apis]
    print("task requests per client:", counts)
    # Per client: perhaps a wait while enrolment is open, then one request per round (held
    # from the upload until the next round opens, answered "train") and the "finished".
    # Polling every second would ask two or three times per round.
    for count in counts:
        assert count <= rounds + 2, counts
