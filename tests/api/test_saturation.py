"""A saturated coordinator says "busy, retry" (503 + Retry-After) and its probes still answer.

Every pooled connection is checked out by the test, as if every request thread held one: a
request then waits ``database_pool_timeout_s`` for a connection and is answered 503 with
``Retry-After`` (not a 500), while ``/healthz`` (no database) and ``/readyz`` (its own engine,
no pool) answer at once. Once the connections are back, the same request succeeds.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import anyio.to_thread
import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlalchemy import exc as sa_exc

from server.api.errors import busy_reason
from server.config import Settings
from tests.support import bearer, coordinator, job_spec, operator, settings_for, stats

POOL_TIMEOUT_S = 0.3
THREADS = 2


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    # No periodic check: the scheduler thread must not take a connection during the test.
    return settings_for(
        database_url,
        tmp_path / "adapters",
        request_threads=THREADS,
        database_pool_timeout_s=POOL_TIMEOUT_S,
        scheduler_interval_s=60,
    )


@pytest.fixture
def api(settings: Settings) -> Iterator[TestClient]:
    with coordinator(settings) as client:
        yield client


def engine_of(api: TestClient) -> Engine:
    engine: Engine = api.app.state.runtime.sessions.kw["bind"]  # type: ignore[attr-defined]
    return engine


def test_the_thread_budget_is_set_at_startup(api: TestClient) -> None:
    async def tokens() -> float:
        return anyio.to_thread.current_default_thread_limiter().total_tokens

    assert api.portal is not None
    assert api.portal.call(tokens) == THREADS


def test_the_pool_holds_a_connection_for_every_thread(api: TestClient, settings: Settings) -> None:
    pool = engine_of(api).pool
    assert pool.size() + pool._max_overflow == THREADS + 2  # type: ignore[attr-defined]
    assert settings.pool_size + settings.pool_max_overflow == THREADS + 2


def test_a_saturated_pool_answers_503_with_retry_after(api: TestClient, settings: Settings) -> None:
    job = api.post("/api/v1/jobs", json=job_spec(), headers=operator(api)).json()
    enrol = {"json": {"stats": stats(40)}, "headers": bearer(job["join_token"])}
    engine = engine_of(api)
    held = [engine.connect() for _ in range(settings.pool_size + settings.pool_max_overflow)]
    try:
        started = time.perf_counter()
        refused = api.post(f"/api/v1/jobs/{job['id']}/clients", **enrol)
        assert refused.status_code == 503, refused.text
        assert time.perf_counter() - started < POOL_TIMEOUT_S + 2
        assert int(refused.headers["retry-after"]) >= 1
        assert "busy" in refused.json()["detail"]
        listing = api.get(f"/api/v1/jobs/{job['id']}", headers=operator(api))
        assert listing.status_code == 503 and "retry-after" in listing.headers
        for path in ("/healthz", "/readyz"):
            started = time.perf_counter()
            probe = api.get(path)
            assert probe.status_code == 200, probe.text
            assert time.perf_counter() - started < 1.0, path
    finally:
        for connection in held:
            connection.close()
    enrolled = api.post(f"/api/v1/jobs/{job['id']}/clients", **enrol)
    assert enrolled.status_code == 201, enrolled.text
    counted = api.get(f"/api/v1/jobs/{job['id']}", headers=operator(api)).json()
    assert counted["enrolled_clients"] == 1  # the refused attempt left nothing behind


@pytest.mark.postgres
def test_a_connection_the_database_dropped_is_answered_503_once(
    postgres_url: str, tmp_path: Path
) -> None:
    # The coordinator's pool does not ping a connection before lending it (a round trip and a
    # transaction per request): a dropped one fails its request with a 503, never a 500,
    # and the pool is renewed for the next.
    settings = settings_for(postgres_url, tmp_path / "adapters", scheduler_interval_s=60)
    with coordinator(settings) as api:
        job = api.post("/api/v1/jobs", json=job_spec(), headers=operator(api)).json()
        assert engine_of(api).pool.checkedin() >= 1  # type: ignore[attr-defined]
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            dropped = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchone()
        assert dropped is not None and dropped[0] >= 1
        lost = api.get(f"/api/v1/jobs/{job['id']}", headers=operator(api))
        assert lost.status_code == 503, lost.text
        assert int(lost.headers["retry-after"]) >= 1
        assert "connection was lost" in lost.json()["detail"]
        again = api.get(f"/api/v1/jobs/{job['id']}", headers=operator(api))
        assert again.status_code == 200, again.text


def _operational(orig: Exception) -> sa_exc.OperationalError:
    return sa_exc.OperationalError("SELECT 1", {}, orig)


def test_lock_contention_is_busy_and_other_database_errors_are_not() -> None:
    assert busy_reason(sa_exc.TimeoutError("QueuePool limit reached"))
    assert busy_reason(_operational(sqlite3.OperationalError("database is locked")))
    assert busy_reason(_operational(psycopg.errors.DeadlockDetected("deadlock detected")))
    assert busy_reason(_operational(psycopg.errors.LockNotAvailable("lock timeout")))
    assert busy_reason(_operational(sqlite3.OperationalError("no such table: jobs"))) is None
    assert busy_reason(_operational(psycopg.errors.UndefinedTable("no jobs"))) is None
    assert busy_reason(ValueError("not a database error")) is None
