"""Dashboard pages: a login gate, one HTML shell per page, and the static files.

Every page is the same shell; ``static/app.js`` picks the view from the URL and loads its
data from ``/api/v1`` with the session cookie. So the HTML carries no job data at all, and
the server side of the dashboard is only this login gate.
"""

from __future__ import annotations

import html
from functools import cache
from pathlib import Path
from typing import Annotated
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from server.api.deps import RuntimeDep
from server.security import (
    SESSION_COOKIE,
    SESSION_SECONDS,
    issue_session,
    matches_any,
    session_is_valid,
)

STATIC_DIR = Path(__file__).parent / "static"
PREFIX = "/dashboard"
MAX_LOGIN_BODY = 4096
NO_STORE = {"Cache-Control": "no-store"}

router = APIRouter(prefix=PREFIX, include_in_schema=False)


@cache
def _page(name: str) -> str:
    return (STATIC_DIR / name).read_text(encoding="utf-8")


def _safe_next(target: str | None) -> str:
    """Only dashboard paths: a login link must not redirect anywhere else."""
    if target and target.startswith(f"{PREFIX}/") and not target.startswith("//"):
        return target
    return f"{PREFIX}/jobs"


def _login_page(target: str, error: str = "", status_code: int = 200) -> HTMLResponse:
    body = (
        _page("login.html")
        .replace("{{next}}", html.escape(target, quote=True))
        .replace("{{error}}", html.escape(error))
        .replace("{{error_hidden}}", "" if error else "hidden")
    )
    return HTMLResponse(body, status_code=status_code, headers=NO_STORE)


def _logged_in(request: Request, runtime: RuntimeDep) -> bool:
    return session_is_valid(request.cookies.get(SESSION_COOKIE), runtime.settings.operator_keys)


@router.get("/login")
def login_form(
    request: Request, runtime: RuntimeDep, next: Annotated[str | None, Query()] = None
) -> Response:
    target = _safe_next(next)
    if _logged_in(request, runtime):
        return RedirectResponse(target, status_code=303)
    return _login_page(target)


@router.post("/login")
async def login(request: Request, runtime: RuntimeDep) -> Response:
    """Exchange the operator key (form field ``operator_key``) for a session cookie."""
    raw = await request.body()
    form = parse_qs(raw[:MAX_LOGIN_BODY].decode("utf-8", "replace"))
    key = (form.get("operator_key") or [""])[0].strip()
    target = _safe_next((form.get("next") or [""])[0])
    if not key or not matches_any(key, runtime.settings.operator_keys):
        return _login_page(target, "That operator key is not valid.", status_code=401)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        issue_session(key),
        max_age=SESSION_SECONDS,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https" or runtime.settings.public_url.startswith("https://"),
    )
    return response


@router.post("/logout")
def logout() -> Response:
    response = RedirectResponse(f"{PREFIX}/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response


@router.get("")
@router.get("/")
def home() -> Response:
    return RedirectResponse(f"{PREFIX}/jobs", status_code=303)


@router.get("/jobs")
@router.get("/jobs/{job_id}")
@router.get("/jobs/{job_id}/clients")
@router.get("/jobs/{job_id}/rounds/{number}")
def page(request: Request, runtime: RuntimeDep) -> Response:
    """The app shell, for a logged-in operator; anyone else goes to the login page."""
    if not _logged_in(request, runtime):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"{PREFIX}/login?next={quote(target)}", status_code=303)
    return HTMLResponse(_page("app.html"), headers=NO_STORE)


def install(app: FastAPI) -> None:
    """Add the dashboard's pages and static files (JS, CSS, vendored uPlot) to ``app``."""
    app.include_router(router)
    app.mount(f"{PREFIX}/static", StaticFiles(directory=STATIC_DIR), name="dashboard-static")
