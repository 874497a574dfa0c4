"""The API reference at ``/docs``: Swagger UI served from the package, so it works offline.

FastAPI's own ``/docs`` loads Swagger UI from a CDN and is blank on a coordinator without
internet; this page loads the copy vendored in ``static/swagger-ui`` (pinned in
frontend/vendor.lock, like the dashboard's uPlot). ReDoc is not offered: it would be a second
vendored bundle for the same schema. The schema itself is at ``/openapi.json``.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

SWAGGER_UI_DIR = Path(__file__).parent / "static" / "swagger-ui"
DOCS_URL = "/docs"
ASSETS_URL = f"{DOCS_URL}/static"

router = APIRouter(include_in_schema=False)


@router.get(DOCS_URL)
def swagger_ui() -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="FLaaS coordinator: API reference",
        swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS_URL}/favicon-32x32.png",
        # No call to the online validator: the page must not reach outside the coordinator.
        swagger_ui_parameters={"validatorUrl": None},
    )


def install(app: FastAPI) -> None:
    """Add ``/docs`` and its assets to ``app`` (made with ``docs_url=None, redoc_url=None``)."""
    app.include_router(router)
    app.mount(ASSETS_URL, StaticFiles(directory=SWAGGER_UI_DIR), name="docs-static")
