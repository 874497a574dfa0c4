"""``GET /metrics``: the Prometheus exposition (``server.observability``).

Open like ``/healthz`` unless ``FLAAS_METRICS_TOKEN`` is set; then a scrape must send
``Authorization: Bearer <token>`` (Prometheus: ``authorization: {credentials: ...}``). It is
a token of its own, not an operator key: the scraper only reads counts and job ids, and an
operator key can create and cancel jobs. Left out of the OpenAPI schema (it is not JSON).
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from server.api.deps import Bearer, RuntimeDep
from server.errors import Unauthorized
from server.observability.prometheus import exposition
from server.security import matches_any

router = APIRouter(include_in_schema=False)


@router.get("/metrics")
def scrape(request: Request, runtime: RuntimeDep, credentials: Bearer) -> Response:
    """Every counter, histogram and level, in Prometheus' text format."""
    token = runtime.settings.metrics_token
    if token is not None and (
        credentials is None or not matches_any(credentials.credentials, [token])
    ):
        raise Unauthorized("GET /metrics needs 'Authorization: Bearer <FLAAS_METRICS_TOKEN>'")
    return Response(exposition(request.app.state.metric_levels), media_type=CONTENT_TYPE_LATEST)
