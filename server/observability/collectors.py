"""Levels read when Prometheus scrapes: jobs by status, clients by state, the broker's queue.

Nothing here is kept between scrapes. The database levels are a few grouped counts in one
read-only transaction (clients only for the jobs still enrolling or running, so the number
of series follows the live jobs); the broker's are one queue-size query and one ping, each
bounded by ``metrics_broker_timeout_s``, and a broker that does not answer in time makes
``flaas_broker_up`` 0 instead of failing the scrape.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from server.db.models import Client, Job, JobStatus
from server.db.session import read_scope
from server.services.metrics import client_states

log = logging.getLogger(__name__)

LIVE = (JobStatus.ENROLLING, JobStatus.RUNNING)


class DatabaseLevels(Collector):
    """``flaas_jobs{status}`` and ``flaas_clients{job_id,state}`` (live jobs only)."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def collect(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("flaas_jobs", "Jobs by status", labels=["status"])
        clients = GaugeMetricFamily(
            "flaas_clients",
            "Clients of each enrolling or running job by state (enrolled: never sampled; "
            "training: update expected in the open round; active: last update accepted; "
            "straggling: missed the last round it was sampled in)",
            labels=["job_id", "state"],
        )
        with read_scope(self.sessions) as session:
            grouped = select(Job.status, func.count()).group_by(Job.status)
            by_status: dict[str, int] = dict(session.execute(grouped).all())
            live = session.execute(
                select(Client.job_id, func.count())
                .join(Job, Job.id == Client.job_id)
                .where(Job.status.in_(LIVE))
                .group_by(Client.job_id)
            ).all()
            for job_id, enrolled in live:
                for state, n in client_states(session, job_id, enrolled).items():
                    clients.add_metric([str(job_id), state], n)
        for status in JobStatus:
            jobs.add_metric([status.value], by_status.get(status, 0))
        yield jobs
        yield clients


class BrokerLevels(Collector):
    """``flaas_broker_up``, ``flaas_queue_depth{queue}`` and ``flaas_workers_up``."""

    def __init__(self, celery: Any, queue: str, timeout_s: float) -> None:
        self.celery = celery
        self.queue = queue
        self.timeout_s = timeout_s

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("flaas_broker_up", "1 if the broker answered this scrape in time")
        depth = GaugeMetricFamily(
            "flaas_queue_depth", "Aggregation steps waiting in the broker's queue", labels=["queue"]
        )
        workers = GaugeMetricFamily(
            "flaas_workers_up", "Celery workers that answered a ping during this scrape"
        )
        try:
            waiting = self._queue_depth()
            replies = self.celery.control.ping(timeout=self.timeout_s)
        except Exception as exc:  # any failure of the broker: reported, never a failed scrape
            log.warning("metrics: the broker did not answer: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        depth.add_metric([self.queue], waiting)
        workers.add_metric([], len(replies))
        yield from (up, depth, workers)

    def _queue_depth(self) -> int:
        from kombu.exceptions import ChannelError

        options = {"socket_connect_timeout": self.timeout_s, "socket_timeout": self.timeout_s}
        with self.celery.connection_for_read(transport_options=options) as connection:
            connection.ensure_connection(max_retries=1, timeout=self.timeout_s)
            try:
                declared = connection.default_channel.queue_declare(self.queue, passive=True)
            except ChannelError:  # never declared: no worker has started yet, nothing waits
                return 0
            return int(declared.message_count)
