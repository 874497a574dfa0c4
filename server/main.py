"""The coordinator application: ``create_app(settings)`` wires settings, database, store, worker."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from server.api import errors
from server.api.routes import clients, health, jobs, rounds
from server.config import Settings, get_settings
from server.db.session import make_engine, make_session_factory
from server.embedded import EmbeddedWorker
from server.services.runtime import Runtime
from server.storage import open_store

log = logging.getLogger(__name__)

API_DESCRIPTION = """Federated LoRA fine-tuning on heterogeneous devices.

Operators authenticate with an operator key, clients with the credential they received
at enrolment, both as `Authorization: Bearer <token>`. Adapters travel as raw
safetensors (see docs/upload-contract.md); everything else is JSON.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the coordinator. With no broker configured it aggregates in-process."""
    settings = settings or get_settings()
    engine = make_engine(settings.database_url)
    worker = EmbeddedWorker()
    runtime = Runtime(
        settings=settings,
        sessions=make_session_factory(engine),
        store=open_store(settings.storage_url),
        dispatch=worker.dispatch,
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        worker.start(runtime)
        log.info(
            "coordinator ready: database %s, storage %s",
            engine.url.render_as_string(),
            settings.storage_url,
        )
        try:
            yield
        finally:
            worker.stop()
            engine.dispose()

    app = FastAPI(
        title="FLaaS coordinator",
        version="1.0.0",
        description=API_DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    errors.install(app)
    for module in (health, jobs, clients, rounds):
        app.include_router(module.router)
    return app
