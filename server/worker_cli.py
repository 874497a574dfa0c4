"""``flaas worker`` and ``flaas beat``: the Celery processes of a production deployment.

Only argparse at the top: ``flaas --help`` builds these parsers on the base install, and
Celery is imported when a command runs. Both read the same ``FLAAS_*`` settings as the
coordinator (``FLAAS_BROKER_URL`` must be set).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``flaas worker``."""
    parser.add_argument(
        "--concurrency",
        type=int,
        default=1,
        help="aggregation processes in this worker (default 1: an aggregation already uses "
        "every core through torch; scale out with more workers)",
    )
    parser.add_argument("--loglevel", default="info")
    parser.add_argument("--hostname", default=None, help="worker node name (default: celery@host)")
    parser.add_argument(
        "--beat",
        action="store_true",
        help="also run the periodic deadline check in this worker (run it in one worker only, "
        "or use `flaas beat`)",
    )
    parser.add_argument(
        "--pool", default="prefork", choices=["prefork", "solo", "threads"], help="Celery pool"
    )


def add_beat_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``flaas beat``."""
    parser.add_argument("--loglevel", default="info")
    parser.add_argument(
        "--schedule",
        default=str(Path(tempfile.gettempdir()) / "flaas-celerybeat-schedule"),
        help="file where beat keeps its last run times",
    )


def _app(loglevel: str) -> Any:
    from celery.signals import setup_logging

    from server.config import get_settings
    from server.observability.logs import configure_logging

    settings = get_settings()

    @setup_logging.connect(weak=False)
    def _flaas_logging(**_: Any) -> None:  # instead of Celery's own handlers and format
        configure_logging(settings.log_format, loglevel)

    if not settings.broker_url:
        raise SystemExit(
            "error: FLAAS_BROKER_URL is not set. `flaas serve` aggregates by itself without a "
            "broker; Celery workers need one (e.g. FLAAS_BROKER_URL=redis://localhost:6379/0)."
        )
    from server.tasks.app import app

    return app


def run_worker(args: argparse.Namespace) -> int:
    """Run a Celery worker consuming the aggregation queue (blocks until stopped)."""
    from server.memory import retain_freed_memory
    from server.tasks.config import QUEUE

    app = _app(args.loglevel)
    retain_freed_memory()  # inherited by the pool's forked processes
    argv = [
        "worker",
        f"--concurrency={args.concurrency}",
        f"--loglevel={args.loglevel}",
        f"--queues={QUEUE}",
        f"--pool={args.pool}",
        # Steps coordinate through the database: no revokes to sync, no worker events.
        "--without-mingle",
        "--without-gossip",
    ]
    if args.hostname:
        argv.append(f"--hostname={args.hostname}")
    if args.beat:
        argv += ["--beat", f"--schedule={app.conf.beat_schedule_filename}"]
    app.worker_main(argv)
    return 0


def run_beat(args: argparse.Namespace) -> int:
    """Run Celery beat: queue the deadline check every ``scheduler_interval_s``."""
    app = _app(args.loglevel)
    app.start(["beat", f"--loglevel={args.loglevel}", f"--schedule={args.schedule}"])
    return 0
