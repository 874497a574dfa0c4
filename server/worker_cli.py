"""``flaas worker`` and ``flaas beat``: the Celery processes of a production deployment.

Only argparse at the top: ``flaas --help`` builds these parsers on the base install, and
Celery is imported when a command runs; so is prometheus_client, which must find the
worker's sample directory already set (``observability.multiprocess``). Both read the same
``FLAAS_*`` settings as the coordinator (``FLAAS_BROKER_URL`` must be set).
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
    parser.add_argument(
        "--metrics-port",
        type=_port,
        default=0,
        help="serve this worker's Prometheus metrics (its pool's counts) at GET /metrics on "
        "this port, with FLAAS_METRICS_TOKEN as the coordinator's (default 0: none)",
    )
    parser.add_argument(
        "--metrics-host", default="0.0.0.0", help="address of --metrics-port (default 0.0.0.0)"
    )


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0 to 65535)")
    return port


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
    from server.observability.multiprocess import process_samples

    with process_samples(private=args.metrics_port > 0) as samples:
        return _run_worker(args, samples)


def _run_worker(args: argparse.Namespace, samples: str | None) -> int:
    from celery.signals import worker_process_shutdown

    from server.config import get_settings
    from server.memory import retain_freed_memory
    from server.tasks.config import QUEUE

    app = _app(args.loglevel)
    retain_freed_memory()  # inherited by the pool's forked processes
    if samples is not None:
        from prometheus_client.multiprocess import mark_process_dead

        @worker_process_shutdown.connect(weak=False)
        def _forget_child(pid: int, **_: Any) -> None:  # its live gauges leave the sums
            mark_process_dead(pid, samples)

    if args.metrics_port:
        _export_metrics(args.metrics_host, args.metrics_port, get_settings().metrics_token)
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


def _export_metrics(host: str, port: int, token: str | None) -> None:
    """Listen now (a port in use is an error before the worker starts); serve once Celery
    has set up logging, and close the listening socket in each forked pool child."""
    from celery.signals import celeryd_after_setup, worker_process_init

    from server.observability.exporter import MetricsExporter

    try:
        exporter = MetricsExporter(host, port, token)
    except OSError as exc:
        raise SystemExit(
            f"error: cannot serve metrics on {host}:{port}: {exc.strerror or exc}"
        ) from None
    celeryd_after_setup.connect(lambda **_: exporter.start(), weak=False)
    worker_process_init.connect(lambda **_: exporter.close_inherited(), weak=False)


def run_beat(args: argparse.Namespace) -> int:
    """Run Celery beat: queue the deadline check every ``scheduler_interval_s``."""
    app = _app(args.loglevel)
    app.start(["beat", f"--loglevel={args.loglevel}", f"--schedule={args.schedule}"])
    return 0
