"""The coordinator application: ``create_app(settings)`` wires settings, database, store, worker."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
from fastapi import FastAPI

from server.api import docs, errors
from server.api.routes import clients, health, jobs, metrics, rounds, scrape
from server.config import Settings, get_settings, warn_if_development_key
from server.dashboard import routes as dashboard
from server.db.session import (
    engine_for,
    make_probe_engine,
    make_session_factory,
    session_scope,
)
from server.embedded import EmbeddedWorker
from server.join import routes as join
from server.notify import JobNotifier, Waiters
from server.observability.collectors import BrokerLevels, DatabaseLevels
from server.observability.http import RequestObserver
from server.services import rounds as round_service
from server.services.known_clients import KnownClients
from server.services.runtime import Runtime
from server.storage import open_store

log = logging.getLogger(__name__)

API_DESCRIPTION = """Federated LoRA fine-tuning on heterogeneous devices.

Operators authenticate with an operator key, clients with the credential they received
at enrolment, both as `Authorization: Bearer <token>`. Adapters travel as raw
safetensors (see docs/upload-contract.md); everything else is JSON.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the coordinator.

    With no broker configured it aggregates in-process and applies deadlines itself
    (``EmbeddedWorker``). With ``broker_url`` set it only sends aggregation tasks: Celery
    workers aggregate (``flaas worker``) and Celery beat applies deadlines (``flaas beat``,
    or ``flaas worker --beat``).
    """
    settings = settings or get_settings()
    warn_if_development_key(settings)  # entry points configure logging before this
    # No pre-ping: it cost every request a round trip and a transaction (bench/request_cost.py,
    # README "Benchmarks"); a connection the database dropped is answered 503 once instead.
    engine = engine_for(settings, pre_ping=False)
    probe_engine = make_probe_engine(settings.database_url)
    worker: EmbeddedWorker | None = None
    dispatch: Any
    levels: list[Any] = []
    if settings.broker_url is None:
        dispatch = worker = EmbeddedWorker()
    else:
        # Imported only here: an embedded coordinator needs no Celery.
        from server.tasks.config import QUEUE, make_celery
        from server.tasks.dispatch import CeleryDispatch

        dispatch = CeleryDispatch(make_celery(settings))
        levels.append(BrokerLevels(dispatch.app, QUEUE, settings.metrics_broker_timeout_s))
    notifier = JobNotifier(Waiters(settings.task_waiters_max), settings.broker_url)
    runtime = Runtime(
        settings=settings,
        sessions=make_session_factory(engine),
        store=open_store(settings.storage_url),
        dispatch=dispatch,
        notify=notifier.publish,
    )

    @asynccontextmanager
    async def lifespan(application: FastAPI) -> AsyncIterator[None]:
        # Sync routes and sync dependencies run on this event loop's default thread limiter;
        # the pool was sized for exactly this many threads (Settings checks it).
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.request_threads
        application.state.probe_threads = health.probe_threads()
        await notifier.start()  # before serving: a waiter must hear what other processes say
        if worker is not None:
            worker.start(runtime)
        else:
            # Re-queue rounds a previous coordinator left aggregating (its publish may have
            # been lost); a duplicate of a running aggregation finds it claimed and returns.
            with session_scope(runtime.sessions) as session:
                round_service.recover(session, runtime)
        log.info(
            "coordinator ready: database %s (pool %d + %d overflow for %d request threads), "
            "storage %s, aggregation %s",
            engine.url.render_as_string(),
            settings.pool_size,
            settings.pool_max_overflow,
            settings.request_threads,
            settings.storage_url,
            "embedded" if worker is not None else "by Celery workers",
        )
        try:
            yield
        finally:
            if worker is not None:
                worker.stop()
            else:
                dispatch.close()
            await notifier.stop()
            engine.dispose()
            probe_engine.dispose()

    app = FastAPI(
        title="FLaaS coordinator",
        version="1.0.0",
        description=API_DESCRIPTION,
        lifespan=lifespan,
        # /docs is served by server.api.docs from vendored files (FastAPI's loads a CDN's).
        docs_url=None,
        redoc_url=None,
    )
    app.state.runtime = runtime
    app.state.waiters = notifier.waiters
    app.state.known_clients = KnownClients(settings.known_clients_max)
    app.state.probe_engine = probe_engine
    app.state.metric_levels = [DatabaseLevels(runtime.sessions), *levels]
    errors.install(app)
    app.add_middleware(RequestObserver)
    for module in (health, jobs, clients, rounds, metrics, scrape):
        app.include_router(module.router)
    dashboard.install(app)
    join.install(app)
    docs.install(app)
    return app
