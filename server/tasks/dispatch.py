"""``CeleryDispatch``: how services queue aggregation steps when a broker is configured."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from celery import Celery

log = logging.getLogger(__name__)

AGGREGATE_ROUND = "flaas.aggregate_round"
AGGREGATE_SHARD = "flaas.aggregate_shard"
COMBINE_ROUND = "flaas.combine_round"


class CeleryDispatch:
    """Sends round steps by task name (keyword-only ids, JSON) to the broker.

    Implements ``services.runtime.AggregationDispatch``. It is called after the transaction that
    made the step necessary has committed; a failed publish is logged, not raised (the data
    is committed, the request must not fail): ``check_deadlines`` re-queues rounds that make
    no progress.
    """

    def __init__(self, app: Celery) -> None:
        self.app = app

    def __call__(self, round_id: uuid.UUID) -> None:
        self._send(AGGREGATE_ROUND, round_id=str(round_id))

    def shard(self, round_id: uuid.UUID, index: int) -> None:
        self._send(AGGREGATE_SHARD, round_id=str(round_id), index=index)

    def combine(self, round_id: uuid.UUID) -> None:
        self._send(COMBINE_ROUND, round_id=str(round_id))

    def _send(self, name: str, **kwargs: Any) -> None:
        try:
            self.app.send_task(name, kwargs=kwargs)
        except Exception:
            log.exception("could not queue %s%s; the periodic check will re-queue it", name, kwargs)

    def close(self) -> None:
        """Release the broker connections."""
        self.app.close()
