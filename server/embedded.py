"""The embedded worker: aggregation and deadlines inside the coordinator process.

Used when no broker is configured (the zero-configuration default): the same task
bodies that the Celery tasks wrap (``services.aggregation``: ``aggregate_round``,
``aggregate_shard``, ``combine_round``) run on a background thread, and a scheduler thread
applies deadlines every ``scheduler_interval_s`` (what Celery beat does with a broker).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from server.db.models import utcnow
from server.db.session import session_scope
from server.services import rounds, scheduler, sharding
from server.services.aggregation import aggregate_round, aggregate_shard, combine_round
from server.services.runtime import Runtime

log = logging.getLogger(__name__)


class EmbeddedWorker:
    """One aggregation thread (rounds aggregate one at a time) and one scheduler thread."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flaas-aggregate")
        self._stop = threading.Event()
        self._scheduler: threading.Thread | None = None
        self._runtime: Runtime | None = None

    def dispatch(self, round_id: uuid.UUID) -> None:
        """Queue the aggregation of a round (called after the transition commits)."""
        attempt = uuid.uuid4().hex  # one per dispatch, like a Celery task id
        self._submit(lambda rt: aggregate_round(rt, round_id, attempt=attempt), round_id)

    __call__ = dispatch

    def shard(self, round_id: uuid.UUID, index: int) -> None:
        """Queue one shard of a sharded round (``services.runtime.AggregationDispatch``)."""
        attempt = uuid.uuid4().hex
        self._submit(lambda rt: aggregate_shard(rt, round_id, index, attempt=attempt), round_id)

    def combine(self, round_id: uuid.UUID) -> None:
        """Queue the combine step of a sharded round."""
        self._submit(lambda rt: combine_round(rt, round_id), round_id)

    def _submit(self, step: Callable[[Runtime], None], round_id: uuid.UUID) -> None:
        self._pool.submit(self._run, step, round_id)

    def _run(self, step: Callable[[Runtime], None], round_id: uuid.UUID) -> None:
        assert self._runtime is not None
        try:
            step(self._runtime)
        except Exception:  # a bug; the stale-aggregation check or a restart retries it
            log.exception("aggregation of round %s crashed", round_id)

    def start(self, runtime: Runtime) -> None:
        """Re-queue unfinished aggregations, then start applying deadlines."""
        self._runtime = runtime
        with session_scope(runtime.sessions) as session:
            # This process is the only worker of its database: claims left running are dead.
            sharding.release_claims(session)
            stuck = rounds.recover(session, runtime)
        if stuck:
            log.info("re-queued or started %d aggregation(s) left undone", stuck)
        self._scheduler = threading.Thread(
            target=self._run_scheduler, name="flaas-scheduler", daemon=True
        )
        self._scheduler.start()

    def _run_scheduler(self) -> None:
        assert self._runtime is not None
        interval = self._runtime.settings.scheduler_interval_s
        while not self._stop.wait(interval):
            try:
                scheduler.run_periodic_check(self._runtime, utcnow())
            except Exception:
                log.exception("deadline check failed; retrying in %.1f s", interval)

    def stop(self) -> None:
        self._stop.set()
        if self._scheduler is not None:
            self._scheduler.join(timeout=5)
        self._pool.shutdown(wait=True, cancel_futures=False)
