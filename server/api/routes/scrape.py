"""``GET /metrics``: the Prometheus exposition (``server.observability``).

Open like ``/healthz`` unless ``FLAAS_METRICS_TOKEN`` is set; then a scrape must send
``Authorization: Bearer <token>`` (Prometheus: ``authorization: {credentials: ...}``). It is
a token of its own, not an operator key: the scraper only reads counts and job ids, and an
operator key can create and cancel jobs. Left out of the OpenAPI schema (it is not JSON).
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from server.api.deps import RuntimeDep
from server.errors import Unauthorized
from server.observability.prometheus import SCRAPE_NEEDS_TOKEN, exposition, scrape_allowed

router = APIRouter(include_in_schema=False)


@router.get("/metrics")
def scrape(request: Request, runtime: RuntimeDep) -> Response:
    """Every counter, histogram and level, in Prometheus' text format."""
    if not scrape_allowed(runtime.settings.metrics_token, request.headers.get("Authorization")):
        raise Unauthorized(SCRAPE_NEEDS_TOKEN)
    return Response(exposition(request.app.state.metric_levels), media_type=CONTENT_TYPE_LATEST)
