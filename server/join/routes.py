"""The join page and its static files.

The page is one HTML shell, the same for every job: ``static/join.js`` reads the job id from
the path and the join token from the fragment, and asks ``GET /api/v1/jobs/{id}/join`` what to
show. So the HTML carries nothing of the job, and the route needs no token.
"""

from __future__ import annotations

import uuid
from functools import cache
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from server.join import PREFIX

STATIC_DIR = Path(__file__).parent / "static"

# The fragment never reaches a server, and no page this one links to learns where it came from.
HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}

router = APIRouter(prefix=PREFIX, include_in_schema=False)


@cache
def _page() -> str:
    return (STATIC_DIR / "join.html").read_text(encoding="utf-8")


@router.get("/{job_id}")
def page(job_id: uuid.UUID) -> HTMLResponse:
    """The join page of a job (an id that is not a UUID is a 422, like the API's)."""
    return HTMLResponse(_page(), headers=HEADERS)


def install(app: FastAPI) -> None:
    """Add the join page and its static files (page script, client bundle, digits assets)."""
    app.include_router(router)
    app.mount(f"{PREFIX}/static", StaticFiles(directory=STATIC_DIR), name="join-static")
