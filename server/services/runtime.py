"""What a service needs besides its database session: settings, the adapter store, a dispatcher,
and the announcer of job changes."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from server.config import Settings
from server.storage import AdapterStore

AggregationDispatch = Callable[[uuid.UUID], None]
JobAnnounce = Callable[[uuid.UUID], None]


@dataclass(frozen=True)
class Runtime:
    """The coordinator's long-lived collaborators, built once at start-up.

    ``dispatch(round_id)`` queues the aggregation of a round (an embedded worker thread
    or a Celery task); ``notify(job_id)`` tells long-polled task requests, in this process and
    the others, that the job changed (``server.notify``). Services call both only through
    ``after_commit``.
    """

    settings: Settings
    sessions: sessionmaker[Session]
    store: AdapterStore
    dispatch: AggregationDispatch
    notify: JobAnnounce
