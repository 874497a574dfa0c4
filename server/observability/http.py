"""``RequestObserver``: the ASGI middleware that counts, times and logs every HTTP request.

Requests are labelled by their route template (``/api/v1/rounds/{round_id}/update``), never
by their raw path, so the number of series stays bounded whatever clients send; a path no
route matches is ``unmatched``. It also writes the access log (uvicorn's is turned off):
the requests clients repeat all the time (task polls, probes, scrapes) at DEBUG, the rest at
INFO.

A response sent before the request's body was read to its end (an upload refused on its
headers, or past its size cap) says ``Connection: close``: the server then closes the
connection after the answer instead of reading, and throwing away, the rest of the body.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.observability import prometheus as m

log = logging.getLogger("server.access")

# Requests that a healthy deployment repeats all the time: their access lines are DEBUG.
POLLED_ROUTES = frozenset({"/api/v1/clients/me/task", "/healthz", "/readyz", "/metrics"})
UNMATCHED = "unmatched"


def route_template(scope: Scope) -> str:
    """The template of the route that handled the request (set by the router)."""
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        return UNMATCHED
    return f"{path}/{{path}}" if isinstance(route, Mount) else path


def _has_body(scope: Scope) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return True
    return False


class RequestObserver:
    """Counts (``flaas_http_*``), times and logs each request, and closes connections whose
    request body was not read."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state = {"status": 500, "received": 0, "sent": 0, "body_read": not _has_body(scope)}

        async def observed_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if not message.get("more_body", False):
                    state["body_read"] = True
            return message

        async def observed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                if not state["body_read"]:
                    headers = [*message.get("headers", ()), (b"connection", b"close")]
                    message = {**message, "headers": headers}
            elif message["type"] == "http.response.body":
                state["sent"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, observed_receive, observed_send)
        finally:
            _observe(scope, state, time.perf_counter() - started)


def _observe(scope: Scope, state: dict[str, Any], seconds: float) -> None:
    route, method, status = route_template(scope), scope["method"], state["status"]
    m.HTTP_REQUESTS.labels(method, route, str(status)).inc()
    m.HTTP_DURATION.labels(method, route).observe(seconds)
    if state["received"]:
        m.BYTES_RECEIVED.labels(route).inc(state["received"])
    if state["sent"]:
        m.BYTES_SENT.labels(route).inc(state["sent"])
    path = scope.get("path", "")
    query = scope.get("query_string", b"").decode("latin-1")
    target = f"{path}?{query}" if query else path
    level = logging.DEBUG if route in POLLED_ROUTES else logging.INFO
    if log.isEnabledFor(level):
        client = scope.get("client")
        log.log(
            level,
            "%s %s %d %.1f ms",
            method,
            target,
            status,
            seconds * 1000,
            extra={
                "method": method,
                "path": path,
                "route": route,
                "status": status,
                "duration_ms": round(seconds * 1000, 1),
                "client_addr": f"{client[0]}:{client[1]}" if client else None,
            },
        )
