"""A worker's own ``GET /metrics`` (``flaas worker --metrics-port``).

What a worker counts (rounds closed, aggregation durations, jobs ended, stragglers) happens
in its pool's child processes, on a machine or in a container of its own: Prometheus scrapes
each worker, as it scrapes each coordinator, instead of the coordinator reading the
worker's sample files. The body is the coordinator's exposition of the counters, summed
over the pool's files (``observability.multiprocess``), without the levels (clients, jobs,
the queue), which are the coordinator's to read; ``FLAAS_METRICS_TOKEN`` guards it the same
way. A small stdlib server on daemon threads: it never keeps a stopping worker alive.
"""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from prometheus_client import CONTENT_TYPE_LATEST

from server.observability.prometheus import SCRAPE_NEEDS_TOKEN, exposition, scrape_allowed

log = logging.getLogger(__name__)


class _Scrape(BaseHTTPRequestHandler):
    server: MetricsExporter

    def do_GET(self) -> None:
        if urlsplit(self.path).path != "/metrics":
            self._answer(404, b"not found: the exposition is at /metrics\n")
        elif not scrape_allowed(self.server.token, self.headers.get("Authorization")):
            self._answer(401, f"{SCRAPE_NEEDS_TOKEN}\n".encode(), {"WWW-Authenticate": "Bearer"})
        else:
            self._answer(200, exposition([]), {"Content-Type": CONTENT_TYPE_LATEST})

    def _answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in {"Content-Type": "text/plain; charset=utf-8", **(headers or {})}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        # Scrapes repeat all the time: DEBUG, like the coordinator's access lines for them.
        log.debug(format, *args)


class MetricsExporter(ThreadingHTTPServer):
    """Listens from construction (a port in use fails the worker's start, not a scrape)."""

    daemon_threads = True

    def __init__(self, host: str, port: int, token: str | None) -> None:
        super().__init__((host, port), _Scrape)
        self.token = token

    def start(self) -> None:
        """Serve on a daemon thread until the process exits."""
        threading.Thread(target=self.serve_forever, name="flaas-metrics", daemon=True).start()
        host, port = self.server_address[:2]
        log.info("worker metrics on http://%s:%d/metrics", host, port)

    def close_inherited(self) -> None:
        """In a forked pool child: close its copy of the listening socket, so that a child
        outliving its worker does not hold the port (the next worker could not bind it)."""
        self.socket.close()
