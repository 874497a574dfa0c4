"""Celery side of the coordinator: aggregation tasks that thin-wrap ``services.aggregation``.

* ``config``: the Celery configuration derived from ``Settings`` (one source of truth).
* ``policy``: the one decorator that gives every round step its delivery policy.
* ``dispatch``: ``CeleryDispatch``, what services call (after commit) to queue a step.
* ``aggregation``: the tasks (``aggregate_round``, ``aggregate_shard``, ``combine_round``,
  ``check_deadlines``).
* ``app``: the worker's app (``celery -A server.tasks.app:app worker``, or ``flaas worker``).

Nothing here is imported by the coordinator unless ``FLAAS_BROKER_URL`` is set.
"""
