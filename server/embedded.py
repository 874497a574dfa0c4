"""The embedded worker: aggregation and deadlines inside the coordinator process.

Used when no broker is configured (the zero-configuration default): the same task
body (``services.aggregation.aggregate_round``) runs on a background thread, and a
scheduler thread applies deadlines every ``scheduler_interval_s``.
"""

from __future__ import annotations

import logging
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

from server.db.session import session_scope
from server.services import rounds
from server.services.aggregation import aggregate_round
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
        self._pool.submit(self._aggregate, round_id)

    def _aggregate(self, round_id: uuid.UUID) -> None:
        assert self._runtime is not None
        try:
            aggregate_round(self._runtime, round_id)
        except Exception:  # a bug; the scheduler's recovery retries it on restart
            log.exception("aggregation of round %s crashed", round_id)

    def start(self, runtime: Runtime) -> None:
        """Re-queue unfinished aggregations, then start applying deadlines."""
        self._runtime = runtime
        with session_scope(runtime.sessions) as session:
            stuck = rounds.recover(session, runtime)
        if stuck:
            log.info("re-queued %d round(s) left aggregating", stuck)
        self._scheduler = threading.Thread(
            target=self._run_scheduler, name="flaas-scheduler", daemon=True
        )
        self._scheduler.start()

    def _run_scheduler(self) -> None:
        assert self._runtime is not None
        interval = self._runtime.settings.scheduler_interval_s
        while not self._stop.wait(interval):
            try:
                with session_scope(self._runtime.sessions) as session:
                    rounds.tick(session, self._runtime)
            except Exception:
                log.exception("deadline check failed; retrying in %.1f s", interval)

    def stop(self) -> None:
        self._stop.set()
        if self._scheduler is not None:
            self._scheduler.join(timeout=5)
        self._pool.shutdown(wait=True, cancel_futures=False)
