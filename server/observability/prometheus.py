"""Prometheus metrics: the event counters and histograms, and the exposition of a scrape.

Events are counted where they happen, once their transaction has committed
(``observability.lifecycle`` for the round state machine, the upload route for refusals, the
HTTP middleware for requests). Levels (clients by state, jobs by status, the broker's queue)
are read when Prometheus scrapes (``observability.collectors``), never kept in memory.

One process keeps its counters in the default registry. Several (uvicorn ``--workers``,
Celery's prefork pool) share them through ``PROMETHEUS_MULTIPROC_DIR``, a directory each of
their processes writes its samples to (``observability.multiprocess``): prometheus_client
reads the variable when it is imported, and the scrape sums the directory's files. The
coordinator's ``GET /metrics`` and a worker's exporter (``observability.exporter``) serve
the same exposition and ask the same question of a scrape's credentials (README,
"Operations").
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from server.errors import (
    AdapterRejected,
    Conflict,
    DomainError,
    Gone,
    InvalidRequest,
    PayloadTooLarge,
    RequestTimeout,
)
from server.observability.multiprocess import multiprocess_dir
from server.security import bearer_token_of, matches_any

disable_created_metrics()  # no *_created series: they double the output and say little

HTTP_REQUESTS = Counter(
    "flaas_http_requests",
    "HTTP requests answered, by method, route template and status",
    ["method", "route", "status"],
)
HTTP_DURATION = Histogram(
    "flaas_http_request_duration_seconds",
    "Seconds from a request's arrival to the end of its response, by route template",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
BYTES_RECEIVED = Counter(
    "flaas_http_received_bytes", "Request body bytes received, by route template", ["route"]
)
BYTES_SENT = Counter(
    "flaas_http_sent_bytes", "Response body bytes sent, by route template", ["route"]
)
JOBS_STARTED = Counter("flaas_jobs_started", "Jobs whose enrolment closed and round 1 opened")
JOBS_ENDED = Counter("flaas_jobs_ended", "Jobs that ended, by final status", ["status"])
ROUNDS_OPENED = Counter("flaas_rounds_opened", "Rounds opened (round 0 not counted)")
ROUNDS_CLOSED = Counter("flaas_rounds_closed", "Rounds closed with a new global adapter")
ROUNDS_FAILED = Counter(
    "flaas_rounds_failed", "Rounds failed: a deadline without quorum or a failed aggregation"
)
STRAGGLERS = Counter("flaas_stragglers", "Sampled clients whose round closed without their update")
AGGREGATION_SECONDS = Histogram(
    "flaas_aggregation_duration_seconds",
    "Seconds from a round's start of aggregation to its close (queueing and shards "
    "included), by strategy",
    ["strategy"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900),
)
UPLOADS_ACCEPTED = Counter(
    "flaas_uploads_accepted", "Client updates accepted (retries not counted)"
)
UPLOADS_REJECTED = Counter(
    "flaas_uploads_rejected", "Client uploads refused, by reason", ["reason"]
)

JOB_END_STATUSES = ("finished", "failed", "cancelled")
# Why an upload was refused: a bounded set (docs/upload-contract.md has the rules).
REJECTION_REASONS = (
    "invalid_adapter",  # 422: the body breaks the upload contract
    "invalid_headers",  # 422: Flaas-Num-Samples or Flaas-Metrics
    "too_large",  # 413: the body or its safetensors header over its cap
    "conflict",  # 409: another update already accepted
    "late",  # 410: the round no longer accepts updates
    "timeout",  # 408: the body stalled
    "disconnected",  # the client went away mid-body
    "other",
)
_REASON_OF: dict[type[DomainError], str] = {
    InvalidRequest: "invalid_headers",
    PayloadTooLarge: "too_large",
    Conflict: "conflict",
    Gone: "late",
    RequestTimeout: "timeout",
}
for _status in JOB_END_STATUSES:  # every series exists from the start, at 0
    JOBS_ENDED.labels(_status)
for _reason in REJECTION_REASONS:
    UPLOADS_REJECTED.labels(_reason)


def rejection_reason(exc: DomainError) -> str:
    """The ``flaas_uploads_rejected`` reason of a refused upload."""
    if isinstance(exc, AdapterRejected):
        return "invalid_adapter"
    for kind, reason in _REASON_OF.items():
        if isinstance(exc, kind):
            return reason
    return "other"


class _ThisProcess(Collector):
    """The default registry's metrics (this process's counters), for a per-scrape registry."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


def exposition(levels: Iterable[Collector]) -> bytes:
    """The text exposition of every counter (this process's, or the shared directory's
    summed over processes) and of ``levels``, collected now."""
    registry = CollectorRegistry(auto_describe=False)
    if multiprocess_dir():
        MultiProcessCollector(registry)
    else:
        registry.register(_ThisProcess())
    for collector in levels:
        registry.register(collector)
    return generate_latest(registry)


SCRAPE_NEEDS_TOKEN = "GET /metrics needs 'Authorization: Bearer <FLAAS_METRICS_TOKEN>'"


def scrape_allowed(token: str | None, authorization: str | None) -> bool:
    """Whether a scrape that sent ``authorization`` (its Authorization header) may read the
    exposition: always while ``token`` (``FLAAS_METRICS_TOKEN``) is unset, else only with
    that token as its Bearer credential, exactly as sent."""
    if token is None:
        return True
    presented = bearer_token_of(authorization)
    return presented is not None and matches_any(presented, [token])
