"""One settings object for the coordinator and its workers (``FLAAS_*`` environment variables)."""

from __future__ import annotations

import json
import logging
import math
from functools import cache, lru_cache
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

log = logging.getLogger(__name__)

DEVELOPMENT_OPERATOR_KEY = "flaas-dev-operator-key"
# Threads of the coordinator besides the request threads that may hold a pooled connection at
# the same time: the embedded scheduler and the embedded aggregation thread. (Readiness probes
# connect on their own engine, outside the pool.)
BACKGROUND_DB_THREADS = 2


class Settings(BaseSettings):
    """Coordinator configuration.

    Every field can be set as ``FLAAS_<NAME>`` (e.g. ``FLAAS_DATABASE_URL``). Lists take
    JSON or a comma-separated string (``FLAAS_OPERATOR_KEYS=key1,key2``).
    """

    model_config = SettingsConfigDict(env_prefix="FLAAS_", env_file=".env", extra="ignore")

    environment: Literal["development", "production"] = "development"
    database_url: str = "sqlite:///./flaas-data/flaas.db"
    storage_url: str = "file://./flaas-data/adapters"
    broker_url: str | None = Field(
        default=None,
        description="Celery broker (redis://...). None runs aggregation inside the coordinator.",
    )
    operator_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [DEVELOPMENT_OPERATOR_KEY]
    )
    public_url: str = Field(
        default="http://127.0.0.1:8000",
        description="Base URL clients use to reach this coordinator (adapter links).",
    )

    # Concurrency: the thread budget, and the connection pool sized against it (README,
    # "Concurrency model").
    request_threads: int = Field(
        default=16,
        ge=1,
        le=1000,
        description="Worker threads for sync routes and sync dependencies (anyio's default "
        "limiter, set at startup); each holds at most one database connection at a time.",
    )
    database_pool_size: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description="Connections kept open in the pool once opened; derived when unset: one "
        "for every thread that may hold one (request_threads + the coordinator's own threads).",
    )
    database_max_overflow: int | None = Field(
        default=None,
        ge=0,
        le=1000,
        description="Connections opened beyond the pool size under load and closed when given "
        "back; derived when unset (0, or what an explicit pool size leaves the threads short).",
    )
    database_pool_timeout_s: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="Seconds a thread waits for a pooled connection; a request that waits "
        "longer is answered 503 with Retry-After.",
    )

    # Long-polled task requests (``GET /api/v1/clients/me/task?wait=N``).
    task_wait_max_s: float = Field(
        default=30.0,
        ge=0,
        le=300,
        description="Longest a task request may wait for its answer to change (a longer "
        "wait is cut to this); 0 turns long-polling off.",
    )
    task_waiters_max: int = Field(
        default=1000,
        ge=0,
        le=100_000,
        description="Task requests that may wait at once in one coordinator process; beyond "
        "it a request is answered at once, with retry_after (each waiter holds an open "
        "connection and a little memory, never a thread or a database connection).",
    )

    inline_adapter_max_bytes: int = Field(
        default=64 * 1024,
        ge=0,
        le=16 * 1024 * 1024,
        description="A train answer carries the round's adapter itself (base64, in `adapter`) "
        "when it is at most this many bytes, so that a client of a small adapter starts "
        "training without a download; 0 never does.",
    )

    known_clients_max: int = Field(
        default=100_000,
        ge=0,
        le=10_000_000,
        description="Client credentials one coordinator process keeps in memory once "
        "authenticated, so that a client's task requests read nothing to learn who it is "
        "(a few hundred bytes each; the least recently used go first; 0 keeps none).",
    )

    last_seen_interval_s: float = Field(
        default=60.0,
        ge=0,
        le=3600,
        description="A client's last-seen time is written at most this often (a conditional "
        "UPDATE on the first request after it passed), so that authenticated requests cost no "
        "write; 0 writes it on every request. Last-seen times are this precise.",
    )

    gc_full_interval_s: float = Field(
        default=600.0,
        ge=1,
        le=86_400,
        description="Seconds between full collections of a serving process's heap (Python's "
        "collector otherwise runs one each time the old generation grows by a quarter, every "
        "object walked with the process stopped: about a second at 10,000 waiting clients); "
        "cyclic garbage that outlived its young collections waits this long to be freed.",
    )

    # Limits: every resource has one.
    max_upload_bytes: int = Field(default=512 * 1024**2, ge=1024)
    max_header_bytes: int = Field(default=1024**2, ge=1024)
    max_metrics_bytes: int = Field(default=4096, ge=64)
    max_clients_per_job: int = Field(default=10_000, ge=1)
    max_page_size: int = Field(default=500, ge=1)
    request_head_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="Seconds a connection may take to send a request's head (request line and "
        "headers); slower ones are closed (uvicorn itself has no such timeout).",
    )
    upload_idle_timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="Longest pause between two parts of an upload's body; a longer one is "
        "answered 408 and the connection closed.",
    )
    scheduler_interval_s: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="Seconds between deadline checks (embedded scheduler thread or Celery beat).",
    )

    # Operations: logs and the Prometheus scrape (README, "Operations").
    log_format: Literal["auto", "json", "text"] = Field(
        default="auto",
        description="Log lines as JSON objects (json), as readable text (text), or JSON "
        "unless stderr is a terminal (auto).",
    )
    metrics_token: str | None = Field(
        default=None,
        description="Bearer token GET /metrics requires; unset, /metrics is open like "
        "/healthz (it holds counts and job ids, no secrets).",
    )
    metrics_broker_timeout_s: float = Field(
        default=1.0,
        gt=0,
        le=30,
        description="Seconds a scrape waits for the broker (queue depth, worker ping).",
    )

    # Aggregation workers (server.tasks): limits and sharding.
    aggregation_time_limit_s: int = Field(
        default=900,
        ge=2,
        le=86_400,
        description="Hard time limit of one aggregation task (the soft limit is 90 % of it); "
        "the Redis visibility timeout is derived from it (x1.1 + 1 s).",
    )
    aggregation_max_attempts: int = Field(
        default=3,
        ge=1,
        le=20,
        description="Worker losses (crash, OOM kill) tolerated per aggregation step before its "
        "round is failed instead of redelivered again.",
    )
    shard_threshold_bytes: int = Field(
        default=256 * 1024**2,
        ge=1,
        description="A round whose accepted updates exceed this many bytes is aggregated in "
        "shards (module groups x client groups), each reading about this much at most.",
    )
    shard_modules: int = Field(
        default=4, ge=1, le=256, description="Most module groups a sharded round is split into."
    )
    shard_max: int = Field(
        default=64, ge=1, le=4096, description="Most shards (tasks) one round is split into."
    )

    @field_validator("broker_url", "metrics_token", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        # FLAAS_BROKER_URL= (set but empty, as compose files do) means "no broker"; an empty
        # FLAAS_METRICS_TOKEN means "no token".
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("operator_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [k.strip() for k in text.split(",") if k.strip()]
        return value

    @model_validator(mode="after")
    def _refuse_default_key_outside_development(self) -> Settings:
        if not self.operator_keys or any(not k for k in self.operator_keys):
            raise ValueError("FLAAS_OPERATOR_KEYS must hold at least one non-empty key")
        if self.uses_development_key and self.environment != "development":
            raise ValueError(
                "the development operator key is refused outside development: "
                "set FLAAS_OPERATOR_KEYS to your own secret(s)"
            )
        if any(len(k) < 16 for k in self.operator_keys) and self.environment != "development":
            raise ValueError("operator keys must be at least 16 characters outside development")
        return self

    @model_validator(mode="after")
    def _pool_serves_every_thread(self) -> Settings:
        # A thread that waits for a connection holds its thread while it waits; if the
        # connections' holders ever need a thread to give them back, nothing moves. So every
        # thread that may hold a connection at once must find one: the pool covers the thread
        # budget, and a pool timeout only ever means a real overload (answered 503).
        needed = self.pool_connections_needed
        connections = self.pool_size + self.pool_max_overflow
        if connections < needed:
            raise ValueError(
                f"FLAAS_DATABASE_POOL_SIZE ({self.pool_size}) + FLAAS_DATABASE_MAX_OVERFLOW "
                f"({self.pool_max_overflow}) = {connections} connections, fewer than the "
                f"{needed} threads that may each hold one (FLAAS_REQUEST_THREADS="
                f"{self.request_threads} + {BACKGROUND_DB_THREADS} coordinator threads): raise "
                "the pool, lower FLAAS_REQUEST_THREADS, or leave the pool settings unset to "
                "derive them"
            )
        return self

    @property
    def uses_development_key(self) -> bool:
        """Whether the well-known development operator key opens the operator API."""
        return DEVELOPMENT_OPERATOR_KEY in self.operator_keys

    @property
    def pool_connections_needed(self) -> int:
        """Connections the coordinator's pool may open: one per thread that may hold one."""
        return self.request_threads + BACKGROUND_DB_THREADS

    @property
    def pool_size(self) -> int:
        """The pool's persistent connections (``database_pool_size``, or one per thread that
        may hold one). Not overflow: an overflow connection is closed when given back while
        the pool is full, and the next burst opens it again (a PostgreSQL backend forked and
        authenticated each time: README, "Concurrency model"); an idle one costs the database
        a few MB and no CPU, and the database must accept as many connections either way."""
        if self.database_pool_size is not None:
            return self.database_pool_size
        return self.pool_connections_needed

    @property
    def pool_max_overflow(self) -> int:
        """Connections beyond ``pool_size`` (``database_max_overflow``, or what the thread
        budget still needs)."""
        if self.database_max_overflow is not None:
            return self.database_max_overflow
        return max(0, self.pool_connections_needed - self.pool_size)

    @property
    def broker_visibility_timeout_s(self) -> int:
        """Redis redelivers an unacknowledged task after this long: above the time limit, so a
        running aggregation is never handed to a second worker."""
        return math.ceil(self.aggregation_time_limit_s * 1.1) + 1


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()


def warn_if_development_key(settings: Settings) -> None:
    """Log, once per process, that ``settings`` accept the development operator key.

    Called by the coordinator once logging is configured, so the warning is a line like any
    other; settings are built earlier (and more than once), where a Python warning would be
    printed bare, with a file path."""
    if settings.uses_development_key:
        _warn_development_key()


@cache  # once per process
def _warn_development_key() -> None:
    log.warning(
        "using the development operator key; set FLAAS_OPERATOR_KEYS before exposing this "
        "coordinator"
    )
