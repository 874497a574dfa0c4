"""Shared fixtures: every database test runs on SQLite and on the real PostgreSQL server.

In CI (``CI=true``) an unreachable PostgreSQL is a failure, never a skip.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# The pretrained built-in bases are cached per test session (and by the processes it starts),
# never in the user's ~/.flaas/cache.
if "FLAAS_CACHE_DIR" not in os.environ:
    os.environ["FLAAS_CACHE_DIR"] = tempfile.mkdtemp(prefix="flaas-test-cache-")
    atexit.register(shutil.rmtree, os.environ["FLAAS_CACHE_DIR"], ignore_errors=True)

POSTGRES_ADMIN_URL = os.environ.get(
    "FLAAS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def _postgres_admin():  # type: ignore[no-untyped-def]
    import psycopg

    return psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5)


def postgres_available() -> bool:
    try:
        with _postgres_admin():
            return True
    except Exception:
        return False


def require_postgres() -> None:
    """Skip locally when PostgreSQL is down; fail in CI, where it must run."""
    if postgres_available():
        return
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(f"PostgreSQL is required in CI but unreachable at {POSTGRES_ADMIN_URL}")
    pytest.skip("PostgreSQL is not reachable (set FLAAS_TEST_POSTGRES_URL)")


def _fresh_postgres_database() -> Iterator[str]:
    name = f"flaas_test_{uuid.uuid4().hex[:12]}"
    with _postgres_admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with _postgres_admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database: a fresh SQLite file, or a fresh database on the PostgreSQL server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'flaas.db'}"
        return
    require_postgres()
    yield from _fresh_postgres_database()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """An empty database on the PostgreSQL server, for what SQLite has no counterpart of."""
    require_postgres()
    yield from _fresh_postgres_database()
