"""The worker's Celery app: ``celery -A server.tasks.app:app worker`` (or ``flaas worker``).

Configured from the process's settings (``FLAAS_*``), with the tasks registered.
"""

from __future__ import annotations

from server.config import get_settings
from server.tasks import aggregation as _tasks  # noqa: F401  (registers the tasks)
from server.tasks.config import make_celery

app = make_celery(get_settings())
