"""The engine's connections: SQLite pragmas on every connection, and read-only sessions."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import event, text

from server.db.migrate import upgrade
from server.db.models import Job
from server.db.session import (
    SQLITE_BUSY_TIMEOUT_MS,
    ReadOnlySession,
    make_engine,
    make_session_factory,
    read_scope,
    session_scope,
)


def test_a_fresh_sqlite_connection_reports_its_pragmas(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'flaas.db'}")
    try:
        # Two checked out at once: the second is a new connection, not the first one again.
        first, second = engine.raw_connection(), engine.raw_connection()
        try:
            for connection in (first, second):
                cursor = connection.cursor()

                def pragma(name: str, cursor=cursor) -> object:  # type: ignore[no-untyped-def]
                    return cursor.execute(f"PRAGMA {name}").fetchone()[0]

                assert pragma("journal_mode") == "wal"
                assert pragma("synchronous") == 1  # NORMAL
                assert pragma("foreign_keys") == 1
                assert pragma("busy_timeout") == SQLITE_BUSY_TIMEOUT_MS
        finally:
            first.close()
            second.close()
    finally:
        engine.dispose()


def _begins(engine) -> list[str]:  # type: ignore[no-untyped-def]
    statements: list[str] = []
    event.listen(
        engine,
        "before_cursor_execute",
        lambda _c, _cur, statement, *_: statements.append(statement),
    )
    return statements


def test_read_scope_never_commits_and_refuses_writes(database_url: str) -> None:
    upgrade(database_url)
    engine = make_engine(database_url)
    sessions = make_session_factory(engine)
    commits: list[object] = []
    event.listen(engine, "commit", commits.append)
    statements = _begins(engine)
    try:
        with read_scope(sessions) as session:
            assert session.scalar(text("SELECT 1")) == 1
            assert session.query(Job).count() == 0
        assert commits == []
        if engine.dialect.name == "sqlite":
            # Deferred: a read takes no write lock.
            assert "BEGIN" in statements and "BEGIN IMMEDIATE" not in statements
        else:
            with read_scope(sessions) as session:
                assert session.scalar(text("SHOW transaction_read_only")) == "on"
            # The pooled connection is handed back writable.
            with session_scope(sessions) as session:
                assert session.scalar(text("SHOW transaction_read_only")) == "off"
        with pytest.raises(ReadOnlySession), read_scope(sessions) as session:
            session.add(Job(name="x"))
            session.flush()
        with pytest.raises(ReadOnlySession), read_scope(sessions) as session:
            session.execute(Job.__table__.delete())
        # Only the session_scope above committed.
        assert len(commits) == (0 if engine.dialect.name == "sqlite" else 1)
    finally:
        engine.dispose()
