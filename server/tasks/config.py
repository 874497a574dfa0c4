"""The Celery configuration, derived from ``Settings`` so that workers and coordinator agree."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from celery import Celery

from server.config import Settings

QUEUE = "flaas"
CHECK_DEADLINES = "flaas.check_deadlines"


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings for ``settings``: the policy of section B3 of the design notes.

    * JSON only: a message can never make a worker unpickle arbitrary objects.
    * Late acknowledgement and one reserved message per worker process, so a lost worker
      loses no task; ``reject_on_worker_lost`` is set per task, on idempotent ones only
      (``server.tasks.policy``), because it re-runs whatever was running.
    * Hard and soft time limits, and a Redis visibility timeout above the hard limit, so Redis
      never hands a still-running aggregation to a second worker.
    * No result backend: results are rows in our own tables, and steps chain through the
      database (no chords).
    """
    limit = settings.aggregation_time_limit_s
    visibility = settings.broker_visibility_timeout_s
    interval = settings.scheduler_interval_s
    return {
        "broker_url": settings.broker_url,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            "visibility_timeout": visibility,
            # Scan for messages of lost workers every visibility/10 s (kombu's default is 100 s).
            "unacked_restore_interval": max(1, min(60, visibility // 10)),
            "unacked_restore_throttle": 1,
        },
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "event_serializer": "json",
        "task_ignore_result": True,
        "result_backend": None,
        "task_acks_late": False,
        "task_reject_on_worker_lost": False,
        "worker_prefetch_multiplier": 1,
        "task_time_limit": limit,
        "task_soft_time_limit": max(1, int(limit * 0.9)),
        "task_default_queue": QUEUE,
        "task_publish_retry_policy": {
            "max_retries": 5,
            "interval_start": 0,
            "interval_step": 0.5,
            "interval_max": 2,
        },
        "worker_soft_shutdown_timeout": 10.0,
        "enable_utc": True,
        "timezone": "UTC",
        "beat_schedule": {
            "flaas-check-deadlines": {
                "task": CHECK_DEADLINES,
                "schedule": interval,
                # A check not started within one interval is superseded by the next one.
                "options": {"expires": max(1.0, interval)},
            }
        },
        "beat_schedule_filename": str(Path(tempfile.gettempdir()) / "flaas-celerybeat-schedule"),
    }


def make_celery(settings: Settings, name: str = "flaas") -> Celery:
    """A Celery app configured from ``settings`` (which must name a broker)."""
    if not settings.broker_url:
        raise ValueError("FLAAS_BROKER_URL is not set: Celery needs a broker (redis://...)")
    app = Celery(name)
    app.conf.update(celery_config(settings))
    return app
