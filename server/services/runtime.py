"""What a service needs besides its database session: settings, the adapter store, a dispatcher,
and the announcer of job changes."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

from server.config import Settings
from server.storage import AdapterStore

JobAnnounce = Callable[[uuid.UUID], None]


class AggregationDispatch(Protocol):
    """Queues the steps of a round's aggregation: the embedded worker or Celery.

    ``dispatch(round_id)`` queues the entry step (``services.aggregation.aggregate_round``),
    ``shard`` one shard of a sharded round and ``combine`` the merge of its shards' partial sums.
    """

    def __call__(self, round_id: uuid.UUID) -> None: ...

    def shard(self, round_id: uuid.UUID, index: int) -> None: ...

    def combine(self, round_id: uuid.UUID) -> None: ...


@dataclass(frozen=True)
class Runtime:
    """The coordinator's long-lived collaborators, built once at start-up.

    ``dispatch`` queues the steps of a round's aggregation (``AggregationDispatch``);
    ``notify(job_id)`` tells long-polled task requests, in this process and
    the others, that the job changed (``server.notify``). Services call both only through
    ``after_commit``.
    """

    settings: Settings
    sessions: sessionmaker[Session]
    store: AdapterStore
    dispatch: AggregationDispatch
    notify: JobAnnounce
