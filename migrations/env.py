"""Alembic environment for the coordinator database (SQLite and PostgreSQL).

The database URL is, in order: a connection handed over in ``config.attributes["connection"]``,
the config's ``sqlalchemy.url`` (set by ``server.db.migrate.alembic_config`` or alembic.ini), or
``get_settings().database_url``. It is normalised like the application's (psycopg 3 for
Postgres) and used with ``NullPool``: migrations never keep connections around.

Autogenerate compares against ``Base.metadata`` and renders portable code that does not import
``server.db.models`` (see ``render_item``): revision files must stay valid when models change.
"""

from __future__ import annotations

import logging.config
from pathlib import Path
from typing import Any

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy import JSON, Connection, DateTime, create_engine, pool, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import make_url
from sqlalchemy.types import TypeDecorator, TypeEngine

from server.db.models import Base
from server.db.session import normalise_database_url

config = context.config
target_metadata = Base.metadata

# Serialises concurrent upgrades on PostgreSQL (several coordinators starting at once).
# Any constant works as long as it is the same for every process: "flaas" in ASCII.
POSTGRES_MIGRATION_LOCK_ID = 0x666C616173

# Only when run from alembic.ini (the `alembic` CLI): programmatic callers keep their logging.
if config.config_file_name is not None and Path(config.config_file_name).is_file():
    logging.config.fileConfig(config.config_file_name, disable_existing_loggers=False)


def database_url() -> str:
    """The URL to migrate: ``sqlalchemy.url`` if the config sets one, else the settings'."""
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        from server.config import get_settings

        url = get_settings().database_url
    return normalise_database_url(url)


def render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | bool:
    """Render the application's custom types as plain, portable SQLAlchemy types.

    Returning ``False`` leaves everything else to Alembic's default rendering.
    """
    if type_ != "type":
        return False
    if isinstance(obj, TypeDecorator):
        impl = obj.impl_instance
        if isinstance(impl, DateTime):
            return f"sa.DateTime(timezone={impl.timezone!r})"
        raise NotImplementedError(
            f"migrations/env.py: add a portable rendering for {type(obj).__name__} "
            "in render_item() so revision files do not import the models"
        )
    if isinstance(obj, JSON) and _is_json_with_jsonb_variant(obj):
        autogen_context.imports.add("from sqlalchemy.dialects import postgresql")
        return "sa.JSON().with_variant(postgresql.JSONB(), 'postgresql')"
    return False


def _is_json_with_jsonb_variant(obj: TypeEngine[Any]) -> bool:
    variants: dict[str, TypeEngine[Any]] = getattr(obj, "_variant_mapping", {})
    return (
        type(obj) is JSON
        and set(variants) == {"postgresql"}
        and (type(variants["postgresql"]) is JSONB)
    )


def _configure_options() -> dict[str, Any]:
    return {
        "target_metadata": target_metadata,
        "render_as_batch": True,  # SQLite cannot ALTER most things: copy-and-move tables
        "compare_type": True,
        "compare_server_default": False,
        "render_item": render_item,
    }


def run_migrations_offline() -> None:
    """Emit SQL to stdout (``alembic upgrade --sql``) without connecting."""
    context.configure(
        url=database_url(),
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        **_configure_options(),
    )
    with context.begin_transaction():
        context.run_migrations()


def _run_with_connection(connection: Connection) -> None:
    context.configure(connection=connection, **_configure_options())
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Held until this transaction ends; the loser then sees the winner's version.
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": POSTGRES_MIGRATION_LOCK_ID}
            )
        context.run_migrations()


def run_migrations_online() -> None:
    """Connect and migrate (or compare, for autogenerate and ``alembic check``)."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_with_connection(connection)
        return

    url = database_url()
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    # No PRAGMA foreign_keys here on purpose: batch operations re-create SQLite tables, and
    # ON DELETE CASCADE would otherwise empty the child tables.
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            _run_with_connection(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
