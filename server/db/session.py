"""Engine and session factory shared by the API, the scheduler and the workers (sync SQLAlchemy).

The statements a client request runs are built once, as module constants with bind
parameters (``client_tasks._CLIENT_ROUND``, ``uploads._ACCEPT``, ...): building a statement and
generating its key for SQLAlchemy's statement cache costs more coordinator time than running
it (176 µs for the acceptance), and a statement object reused keeps its key.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from server.config import Settings

# Readiness probes answer within about a second even when the database hangs (libpq's
# connect_timeout counts whole seconds and treats 1 as 2).
PROBE_CONNECT_TIMEOUT_S = 2
PROBE_STATEMENT_TIMEOUT_MS = 1000
# SQLite waits this long for the write lock before answering SQLITE_BUSY (a 503).
SQLITE_BUSY_TIMEOUT_MS = 30_000
# Marks a read_scope's connections: SQLite begins them DEFERRED (no write lock).
READ_ONLY_OPTION = "flaas_read_only"


def normalise_database_url(url: str) -> str:
    """Use psycopg 3 for Postgres whatever driver the URL names (``postgres://``, ``postgresql://``)."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def make_engine(
    url: str,
    *,
    pool_size: int = 10,
    max_overflow: int = 20,
    pool_timeout_s: float = 30.0,
    pre_ping: bool = True,
) -> Engine:
    """An engine for ``url``; SQLite gets its pragmas on every connection (``_sqlite_pragmas``:
    WAL, ``synchronous=NORMAL``, a busy timeout, foreign keys) and its parent folder created.

    The coordinator and the workers size the pool from their settings (``engine_for``).
    ``pre_ping`` tests each connection as it leaves the pool (on PostgreSQL a round trip and a
    transaction of its own); without it a connection the server dropped fails its request
    once, the whole pool is invalidated, and the request is answered 503
    (``server.api.errors.busy_reason``).
    """
    url = normalise_database_url(url)
    parsed = make_url(url)
    kwargs: dict[str, Any] = {"pool_pre_ping": pre_ping}
    pool = {"pool_size": pool_size, "max_overflow": max_overflow, "pool_timeout": pool_timeout_s}
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
            kwargs.update(pool)  # a file database gets a QueuePool; memory ones are static
        kwargs["connect_args"] = {
            "check_same_thread": False,
            "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000,
        }
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin_immediate)
        return engine
    return create_engine(url, **pool, **kwargs)


def engine_for(settings: Settings, *, pre_ping: bool = True) -> Engine:
    """The process's engine, its pool sized against the thread budget (``Settings``)."""
    return make_engine(
        settings.database_url,
        pool_size=settings.pool_size,
        max_overflow=settings.pool_max_overflow,
        pool_timeout_s=settings.database_pool_timeout_s,
        pre_ping=pre_ping,
    )


def make_probe_engine(url: str) -> Engine:
    """An engine for readiness probes only: no pool (each probe opens its own connection, so
    it never queues behind requests for a pooled one) and short timeouts.

    SQLite gets neither the pragmas nor ``BEGIN IMMEDIATE``: a probe must not wait for the
    write lock, and ``SELECT 1`` needs no transaction of its own.
    """
    url = normalise_database_url(url)
    if make_url(url).get_backend_name() == "sqlite":
        return create_engine(
            url,
            poolclass=NullPool,
            connect_args={"check_same_thread": False, "timeout": PROBE_CONNECT_TIMEOUT_S},
        )
    return create_engine(
        url,
        poolclass=NullPool,
        connect_args={
            "connect_timeout": PROBE_CONNECT_TIMEOUT_S,
            "options": f"-c statement_timeout={PROBE_STATEMENT_TIMEOUT_MS}",
        },
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Take transaction control from pysqlite so that every transaction can begin
    # IMMEDIATE (below): a deferred transaction that reads, then writes after another
    # writer committed, fails with SQLITE_BUSY instead of waiting for the lock.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # In WAL mode NORMAL syncs at checkpoints, not at every commit: a power loss may undo
    # the last commits but never corrupts the file (an application crash loses nothing).
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.close()


def _sqlite_begin_immediate(connection: Any) -> None:
    # A read_scope never writes, so it begins DEFERRED: in WAL mode it then reads a snapshot
    # without waiting for (or holding) the write lock.
    if connection.get_execution_options().get(READ_ONLY_OPTION):
        connection.exec_driver_sql("BEGIN")
    else:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session that commits on success and rolls back on any exception."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


_read_binds: weakref.WeakKeyDictionary[Engine, Engine] = weakref.WeakKeyDictionary()


def _read_only_bind(engine: Engine) -> Engine:
    """``engine`` with the read-only options (same pool): Postgres begins ``READ ONLY``
    (psycopg puts it in its ``BEGIN``, no extra round trip), SQLite begins DEFERRED."""
    bind = _read_binds.get(engine)
    if bind is None:
        options: dict[str, Any] = {READ_ONLY_OPTION: True}
        if engine.dialect.name == "postgresql":
            options["postgresql_readonly"] = True
        bind = _read_binds[engine] = engine.execution_options(**options)
    return bind


@contextmanager
def read_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session for reading only: it never commits (closing it ends the transaction).

    Read requests (a task poll, an adapter download, a job's status) cost no commit: no
    fsync, no write lock on SQLite. A write in it is a bug and raises (``ReadOnlySession``).
    """
    engine = factory.kw.get("bind")
    session = factory(bind=_read_only_bind(engine)) if isinstance(engine, Engine) else factory()
    session.info[READ_ONLY_OPTION] = True
    try:
        yield session
    finally:
        session.close()


class ReadOnlySession(RuntimeError):
    """A write attempted in a ``read_scope`` session (a bug, never a client's fault)."""


@event.listens_for(Session, "before_flush")
def _refuse_flush(session: Session, _context: Any, _instances: Any) -> None:
    if session.info.get(READ_ONLY_OPTION):
        raise ReadOnlySession("a read_scope session must not write: use session_scope")


@event.listens_for(Session, "do_orm_execute")
def _refuse_dml(state: Any) -> None:
    if state.session.info.get(READ_ONLY_OPTION) and (
        state.is_insert or state.is_update or state.is_delete
    ):
        raise ReadOnlySession("a read_scope session must not write: use session_scope")


def after_commit(session: Session, callback: Callable[[], None]) -> None:
    """Run ``callback`` once the session's current transaction commits (never on rollback).

    Follow-up work (queueing an aggregation) must only start after the rows it reads
    are committed, or a fast worker would find the old state.
    """
    callbacks: list[Callable[[], None]] = session.info.setdefault("after_commit", [])
    callbacks.append(callback)


@event.listens_for(Session, "after_commit")
def _run_after_commit(session: Session) -> None:
    callbacks = session.info.pop("after_commit", [])
    for callback in callbacks:
        callback()


@event.listens_for(Session, "after_rollback")
def _drop_after_commit(session: Session) -> None:
    session.info.pop("after_commit", None)
