"""What a request costs the database: commits and last-seen writes per request type.

Asserts behaviour, not timings (issue 13): a task poll, an adapter download, a job's status
and an identical retry commit nothing; a waiting client's task request, asked again before its
job changes, reads nothing; an accepted or refused upload commits exactly once; an
authenticated request writes ``last_seen_at`` at most once per interval.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, event, update

from server.db.models import Client, utcnow
from server.services import scheduler
from server.services.known_clients import KnownClients
from tests.api.conftest import RunningJob, start_job
from tests.support import (
    adapter_bytes,
    bearer,
    coordinator,
    job_spec,
    operator,
    settings_for,
    stats,
)


@dataclass
class Costs:
    """Commits and last-seen UPDATEs made by request threads (not the embedded scheduler or
    aggregation threads, whose work is not the request's)."""

    commits: int = 0
    last_seen_writes: int = 0
    statements: int = 0
    begins: int = 0  # of the statements, SQLite's explicit BEGINs (PostgreSQL's are implicit)
    autorank_reads: int = 0  # statements that read a job's AutoRank record (its matrix)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        with self._lock:
            self.commits = self.last_seen_writes = self.statements = self.begins = 0
            self.autorank_reads = 0

    def watch(self, engine: Engine) -> None:
        def on_commit(_connection: Any) -> None:
            if not threading.current_thread().name.startswith("flaas-"):
                with self._lock:
                    self.commits += 1

        def on_execute(_c: Any, _cur: Any, statement: str, *_: Any) -> None:
            if threading.current_thread().name.startswith("flaas-"):
                return
            normalised = " ".join(statement.split()).lower()
            with self._lock:
                self.statements += 1
                if normalised.startswith("begin"):
                    self.begins += 1
                if normalised.startswith("select") and "jobs.autorank" in normalised:
                    self.autorank_reads += 1
                if normalised.startswith("update clients set last_seen_at"):
                    self.last_seen_writes += 1

        event.listen(engine, "commit", on_commit)
        event.listen(engine, "before_cursor_execute", on_execute)


@pytest.fixture
def api(database_url: str, tmp_path: Path) -> Iterator[TestClient]:
    # The scheduler's periodic check is a write transaction of its own: out of the way here.
    settings = settings_for(database_url, tmp_path / "adapters", scheduler_interval_s=60)
    with coordinator(settings) as client:
        yield client


@pytest.fixture
def costs(api: TestClient) -> Costs:
    costs = Costs()
    costs.watch(api.app.state.runtime.sessions.kw["bind"])  # type: ignore[attr-defined]
    return costs


def _engine(api: TestClient) -> Engine:
    return api.app.state.runtime.sessions.kw["bind"]  # type: ignore[attr-defined,no-any-return]


def _age_last_seen(api: TestClient, seconds: float) -> None:
    """Move every client's last-seen time ``seconds`` into the past, and let the coordinator
    forget the clients it knows (their copies of it are newer): each is read again once."""
    with _engine(api).begin() as connection:
        connection.execute(
            update(Client).values(last_seen_at=utcnow() - timedelta(seconds=seconds))
        )
    state = api.app.state
    state.known_clients = KnownClients(state.known_clients.limit)


def _trainees(api: TestClient, running: RunningJob) -> list[tuple[int, dict[str, Any]]]:
    tasks = [
        (i, api.get("/api/v1/clients/me/task", headers=running.headers(i)).json())
        for i in range(len(running.clients))
    ]
    return [(i, task) for i, task in tasks if task["action"] == "train"]


def _upload(api: TestClient, running: RunningJob, index: int, task: dict[str, Any], **kw: Any):  # type: ignore[no-untyped-def]
    return api.put(
        task["upload_url"],
        content=adapter_bytes(task["rank"], **kw),
        headers={**running.headers(index), "Flaas-Num-Samples": "10"},
    )


def test_reads_commit_nothing(api: TestClient, costs: Costs) -> None:
    running = start_job(api)
    (index, task), *_ = _trainees(api, running)
    costs.reset()
    assert api.get("/api/v1/clients/me/task", headers=running.headers(index)).status_code == 200
    assert costs.commits == 0  # was 2: the last-seen write and the read's own commit
    assert api.get(task["adapter_url"], headers=running.headers(index)).status_code == 200
    assert (
        api.get("/api/v1/clients/me/task?wait=0.2", headers=running.headers(index)).json()["action"]
        == "train"
    )
    assert api.get(f"/api/v1/jobs/{running.id}", headers=operator(api)).status_code == 200
    assert api.get(f"/api/v1/jobs/{running.id}/clients", headers=operator(api)).status_code == 200
    assert api.get(f"/api/v1/jobs/{running.id}/metrics", headers=operator(api)).status_code == 200
    assert costs.commits == 0
    assert costs.last_seen_writes == 0


def test_a_waiting_clients_renewed_task_requests_read_nothing(
    api: TestClient, costs: Costs
) -> None:
    running = start_job(api)
    trainees = _trainees(api, running)  # this process now knows every client's credential
    assert len(trainees) > 2  # two uploads do not close the round
    index, task = trainees[0]
    assert _upload(api, running, index, task).status_code == 201
    waiters = api.app.state.waiters  # type: ignore[attr-defined]
    ask = "/api/v1/clients/me/task"
    waiters.max_age_s = 0  # the job's shared read is begun after the upload...
    assert api.get(ask, headers=running.headers(index)).json()["action"] == "wait"
    waiters.max_age_s = 600  # ...and stays fresh for the rest of the test, however slow
    costs.reset()
    for _ in range(3):  # what a long-polled wait renewed costs before it waits
        answer = api.get(ask, headers=running.headers(index)).json()
        assert answer["action"] == "wait"
        assert "already accepted" in answer["reason"]
    assert costs.statements == 0
    # Another client of the job shares that read too; its train answer's assignment is read
    # again (the shared read cannot know whether its update was accepted since), and only that.
    other, other_task = trainees[1]
    for _ in range(2):
        costs.reset()
        assert api.get(ask, headers=running.headers(other)).json() == other_task
        assert costs.statements - costs.begins == 1
    # Once this process has accepted its update, the same shared read (which still shows
    # it pending) answers it wait, with no read: the acceptance is final.
    assert _upload(api, running, other, other_task).status_code == 201
    costs.reset()
    answer = api.get(ask, headers=running.headers(other)).json()
    assert answer["action"] == "wait" and "already accepted" in answer["reason"]
    assert costs.statements == 0
    # A process that did not accept it (here: one that forgot its clients) reads it again.
    api.app.state.known_clients = KnownClients(api.app.state.known_clients.limit)  # type: ignore[attr-defined]
    answer = api.get(ask, headers=running.headers(other)).json()
    assert answer["action"] == "wait" and "already accepted" in answer["reason"]


def test_client_requests_do_not_read_the_cohorts_ranking_matrix(
    api: TestClient, costs: Costs
) -> None:
    running = start_job(api)  # AutoRank stored its matrix: one row per client
    costs.reset()
    (index, task), *_ = _trainees(api, running)
    assert api.get(task["adapter_url"], headers=running.headers(index)).status_code == 200
    assert _upload(api, running, index, task).status_code == 201
    assert costs.statements > 0
    assert costs.autorank_reads == 0
    # The operator's summary shows the ranking: it reads the record.
    assert api.get(f"/api/v1/jobs/{running.id}/summary", headers=operator(api)).status_code == 200
    assert costs.autorank_reads > 0


def test_an_unknown_credential_is_refused_however_often_it_asks(api: TestClient) -> None:
    start_job(api)
    for _ in range(2):
        response = api.get("/api/v1/clients/me/task", headers=bearer("flaas_c_not-issued"))
        assert response.status_code == 401


def test_last_seen_is_written_once_per_interval(api: TestClient, costs: Costs) -> None:
    running = start_job(api)
    headers = running.headers(0)
    _age_last_seen(api, 61)  # past the 60 s default
    costs.reset()
    before = utcnow()
    for _ in range(3):
        assert api.get("/api/v1/clients/me/task", headers=headers).status_code == 200
    assert costs.last_seen_writes == 1  # the first request only
    assert costs.commits == 1
    clients = api.get(f"/api/v1/jobs/{running.id}/clients", headers=operator(api)).json()["items"]
    seen = {c["id"]: c["last_seen_at"] for c in clients}
    assert datetime.fromisoformat(seen[running.clients[0]["client_id"]]) >= before
    assert datetime.fromisoformat(seen[running.clients[1]["client_id"]]) < before


def test_an_upload_commits_once(api: TestClient, costs: Costs) -> None:
    running = start_job(api)
    trainees = _trainees(api, running)
    assert len(trainees) >= 2
    (first, first_task), *rest = trainees
    _age_last_seen(api, 61)  # the upload's one commit also marks the client seen
    costs.reset()
    accepted = _upload(api, running, first, first_task)
    assert accepted.status_code == 201, accepted.text
    assert costs.commits == 1  # was 3: last seen, the upload's checks, the acceptance
    assert costs.last_seen_writes == 1

    costs.reset()
    retry = api.put(
        first_task["upload_url"],
        content=adapter_bytes(first_task["rank"]),
        headers={
            **running.headers(first),
            "Flaas-Num-Samples": "10",
            "Flaas-Content-Sha256": accepted.json()["sha256"],
        },
    )
    assert retry.status_code == 200
    assert costs.commits == 0  # an identical retry announced by its digest reads only

    index, task = rest[0]
    costs.reset()
    refused = _upload(api, running, index, task, head=False)
    assert refused.status_code == 422, refused.text
    assert costs.commits == 1  # the rejection is recorded (and the client marked seen) once

    # The round's last upload commits once more: the round's move to aggregating, after the
    # acceptance's commit (the aggregation it queues is not the request's).
    for position, (index, task) in enumerate(rest, start=1):
        costs.reset()
        response = _upload(api, running, index, task)
        assert response.status_code == 201, response.text
        assert costs.commits == (2 if position == len(rest) else 1)


def test_known_clients_download_and_upload_read_their_round_once(
    api: TestClient, costs: Costs
) -> None:
    running = start_job(api)
    trainees = _trainees(api, running)  # their task requests: the credentials are known now
    for index, task in trainees:  # the first download of a rank cuts the round's adapter
        assert api.get(task["adapter_url"], headers=running.headers(index)).status_code == 200
    for index, task in trainees:  # a rank already cut (another client's, or a retry)
        costs.reset()
        download = api.get(task["adapter_url"], headers=running.headers(index))
        assert download.status_code == 200
        assert costs.statements - costs.begins == 1  # the round and the client's rank in it

    index, task = trainees[0]
    costs.reset()
    assert _upload(api, running, index, task).status_code == 201
    # One read before the body (the round and the client's update in it); then the
    # acceptance (the round share-locked and the row RETURNed in one statement), the upload's
    # one commit, and the count after it (a read).
    assert costs.commits == 1
    assert costs.statements - costs.begins == 3


def test_a_refused_upload_still_marks_the_client_seen(api: TestClient, costs: Costs) -> None:
    running = start_job(api)
    (index, task), *_ = _trainees(api, running)
    _age_last_seen(api, 61)
    costs.reset()
    response = api.put(task["upload_url"], content=b"x", headers=running.headers(index))
    assert response.status_code == 422 and "Flaas-Num-Samples" in response.text
    assert costs.last_seen_writes == 1
    costs.reset()
    api.get("/api/v1/clients/me/task", headers=bearer(running.clients[index]["credential"]))
    assert costs.last_seen_writes == 0


def test_an_idle_scheduler_tick_commits_nothing(api: TestClient, costs: Costs) -> None:
    runtime = api.app.state.runtime  # type: ignore[attr-defined]
    start_job(api)
    costs.reset()
    assert not scheduler.run_periodic_check(runtime, utcnow())  # round 1 open, deadline ahead
    assert costs.commits == 0
    # Past the round's deadline there is work: one write transaction.
    assert scheduler.run_periodic_check(runtime, utcnow() + timedelta(seconds=301))
    assert costs.commits == 1


def test_a_drawn_credential_costs_an_enrolment_no_statement_and_its_repeat_writes_nothing(
    api: TestClient, costs: Costs
) -> None:
    cohort = {"min_clients": 5, "target_clients": 5, "timeout_s": 300}  # none starts the job
    job = api.post("/api/v1/jobs", json=job_spec(enrolment=cohort), headers=operator(api)).json()

    def enrol(i: int, **extra: Any) -> tuple[int, int]:
        costs.reset()
        answer = api.post(
            f"/api/v1/jobs/{job['id']}/clients",
            json={"stats": stats(30 + i), "name": f"device-{i}", **extra},
            headers=bearer(job["join_token"]),
        )
        assert answer.status_code in (200, 201), answer.text
        return answer.status_code, costs.statements

    drawn = "flc_" + secrets.token_urlsafe(32)
    assert enrol(0)[0] == 201
    named = enrol(1)[1]
    # One read answers both questions: is the name taken, has this credential enrolled.
    assert enrol(2, credential=drawn) == (201, named)
    status, repeated = enrol(2, credential=drawn)
    assert status == 200 and repeated < named
    assert costs.last_seen_writes == 0
