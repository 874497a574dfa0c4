"""Liveness and readiness probes: they answer even when every request thread is busy.

Neither probe takes a request thread or a pooled connection, so an orchestrator never sees a
saturated coordinator as a dead one: ``/healthz`` runs on the event loop and touches nothing,
``/readyz`` runs its checks on threads of its own (``probe_threads``) and connects through an
engine of its own with no pool (``make_probe_engine``), each check bounded in time.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
import anyio.to_thread
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import Engine, text

from server.api.deps import RuntimeDep
from server.errors import ServiceUnavailable
from server.schemas.api import Health
from server.storage import AdapterStore

router = APIRouter(tags=["health"])

# A check that has not answered after this long reports "timeout" (its thread is abandoned;
# the probe engine's own connect and statement timeouts end it). It answers in milliseconds
# when the database is healthy, even with every request thread busy; the margin is for a
# coordinator short of CPU, which should not be reported unready for being busy.
CHECK_TIMEOUT_S = 2.0
# Concurrent readiness checks; probes arrive one every few seconds, so a few threads suffice.
PROBE_THREADS = 4


def probe_threads() -> anyio.CapacityLimiter:
    """The limiter readiness checks run under: not the request threads' (create it on the
    event loop that serves the app, in the lifespan)."""
    return anyio.CapacityLimiter(PROBE_THREADS)


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is up (the event loop answers)."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
async def readyz(request: Request, runtime: RuntimeDep) -> JSONResponse:
    """The database and the adapter store are reachable."""
    engine: Engine = request.app.state.probe_engine
    limiter: anyio.CapacityLimiter = request.app.state.probe_threads
    checks: dict[str, str] = {}

    async def check(name: str, probe: Callable[[], str]) -> None:
        checks[name] = f"timeout: no answer within {CHECK_TIMEOUT_S:g} s"
        with anyio.move_on_after(CHECK_TIMEOUT_S):
            checks[name] = await anyio.to_thread.run_sync(
                probe, limiter=limiter, abandon_on_cancel=True
            )

    async with anyio.create_task_group() as group:
        group.start_soon(check, "database", lambda: _database(engine))
        group.start_soon(check, "storage", lambda: _storage(runtime.store))
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse(
        Health(status="ok" if ready else "unavailable", checks=checks).model_dump(),
        status_code=200 if ready else 503,
    )


def _database(engine: Engine) -> str:
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:  # any driver error means "not ready", reported as text
        return f"unreachable: {type(exc).__name__}"
    return "ok"


def _storage(store: AdapterStore) -> str:
    try:
        store.check()
    except ServiceUnavailable as exc:
        return f"unreachable: {exc.message}"
    return "ok"
