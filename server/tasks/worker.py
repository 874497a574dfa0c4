"""The runtime of a worker process: settings, database, store and dispatcher, built lazily.

Built on first use in each process (never before the prefork pool forks, so no database
connection is shared between processes).
"""

from __future__ import annotations

import os

from celery import current_app

from server.config import get_settings
from server.db.session import engine_for, make_session_factory
from server.notify import announcer_for
from server.services.runtime import Runtime
from server.storage import open_store
from server.tasks.dispatch import CeleryDispatch

_runtimes: dict[int, Runtime] = {}


def worker_runtime() -> Runtime:
    """This process's runtime (created on first call)."""
    pid = os.getpid()
    runtime = _runtimes.get(pid)
    if runtime is None:
        _runtimes.clear()  # a forked child drops its parent's (its engine is not ours)
        settings = get_settings()
        runtime = Runtime(
            settings=settings,
            sessions=make_session_factory(engine_for(settings)),
            store=open_store(settings.storage_url),
            dispatch=CeleryDispatch(current_app),
            # Rounds this worker closes wake the clients long-polling on every coordinator.
            notify=announcer_for(settings.broker_url),
        )
        _runtimes[pid] = runtime
    return runtime
