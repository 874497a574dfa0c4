"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from server.api.deps import RuntimeDep
from server.errors import ServiceUnavailable
from server.schemas.api import Health
from server.services.runtime import Runtime

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process is up."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
async def readyz(runtime: RuntimeDep) -> JSONResponse:
    """The database and the adapter store are reachable."""
    checks = await run_in_threadpool(_checks, runtime)
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse(
        Health(status="ok" if ready else "unavailable", checks=checks).model_dump(),
        status_code=200 if ready else 503,
    )


def _checks(runtime: Runtime) -> dict[str, str]:
    checks: dict[str, str] = {}
    try:
        with runtime.sessions() as session:
            session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # any driver error means "not ready", reported as text
        checks["database"] = f"unreachable: {type(exc).__name__}"
    try:
        runtime.store.check()
        checks["storage"] = "ok"
    except ServiceUnavailable as exc:
        checks["storage"] = f"unreachable: {exc.message}"
    return checks
