"""The ``flaas`` command line.

Imports are lazy on purpose: ``flaas client ...`` must start on a base install that has
none of the coordinator's dependencies.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

DEFAULT_SERVER = "http://127.0.0.1:8000"


def _serve(args: argparse.Namespace) -> int:
    from server.observability.multiprocess import process_samples

    if args.workers < 1:
        raise SystemExit(f"error: --workers must be at least 1, got {args.workers}")
    # Before anything imports prometheus_client: several processes count in shared files.
    with process_samples(private=args.workers > 1):
        return _serve_with_samples(args)


def _serve_with_samples(args: argparse.Namespace) -> int:
    from server.config import get_settings
    from server.db.migrate import upgrade
    from server.notify import redis_url_of
    from server.observability.logs import configure_logging
    from server.serving import serve

    settings = get_settings()
    configure_logging(settings.log_format, args.log_level)
    if args.workers > 1 and redis_url_of(settings.broker_url) is None:
        raise SystemExit(
            f"error: --workers {args.workers} needs FLAAS_BROKER_URL=redis://... : the "
            "coordinator's processes tell each other of round changes through Redis, and "
            "Celery workers aggregate (`flaas worker`)"
        )
    if not args.no_migrate:
        upgrade(settings.database_url)
    processes = f", {args.workers} processes" if args.workers > 1 else ""
    print(
        f"flaas coordinator on http://{args.host}:{args.port}  (API docs at /docs{processes})",
        flush=True,
    )
    serve(settings, args.host, args.port, args.workers)
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from server.config import get_settings
    from server.db.migrate import current, upgrade

    url = args.database_url or get_settings().database_url
    upgrade(url, args.revision)
    print(f"database at revision {current(url)}")
    return 0


def _adapter_export(args: argparse.Namespace) -> int:
    """Download a round's global adapter in peft's format and unpack it into ``--out``."""
    import hashlib
    import io
    import zipfile
    from pathlib import PurePosixPath

    params: dict[str, Any] = {"format": "peft"}
    if args.round is not None:
        params["round"] = args.round
    from server.cli_jobs import resolve_job_id, send

    job_id = resolve_job_id(args, args.job)
    response = send(args, "GET", f"/api/v1/jobs/{job_id}/adapter", params=params)
    try:
        archive = zipfile.ZipFile(io.BytesIO(response.content))
    except zipfile.BadZipFile:
        raise SystemExit("error: the coordinator's answer is not a zip archive") from None
    out = Path(args.out)
    files: dict[str, bytes] = {}
    for info in archive.infolist():
        # The archive holds one folder of plain files; anything else is not unpacked.
        parts = PurePosixPath(info.filename).parts
        if info.is_dir() or len(parts) != 2 or parts[1].startswith("."):
            raise SystemExit(f"error: unexpected entry {info.filename!r} in the archive")
        files[parts[1]] = archive.read(info)
    expected = {"adapter_config.json", "adapter_model.safetensors", "flaas_lineage.json"}
    missing = expected - set(files)
    if missing:
        raise SystemExit(f"error: the archive lacks {', '.join(sorted(missing))}")
    out.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (out / name).write_bytes(data)
        print(f"{out / name}  {len(data)} bytes")
    config = json.loads(files["adapter_config.json"])
    lineage = json.loads(files["flaas_lineage.json"])
    weights = hashlib.sha256(files["adapter_model.safetensors"]).hexdigest()
    print(
        f"job {job_id} round {lineage['round']}: rank {config['r']}, "
        f"lora_alpha {config['lora_alpha']}, adapter_model.safetensors sha256 {weights}"
    )
    return 0


def _add_server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server",
        default=os.environ.get("FLAAS_SERVER", DEFAULT_SERVER),
        help=f"coordinator base URL (default: $FLAAS_SERVER or {DEFAULT_SERVER})",
    )
    parser.add_argument(
        "--operator-key",
        default=None,
        help="operator API key (default: $FLAAS_OPERATOR_KEY, else the first key of "
        "$FLAAS_OPERATOR_KEYS; the development key only for a coordinator on this machine)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="flaas", description="Federated LoRA fine-tuning as a service.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the coordinator (embedded defaults)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="lowest level logged (debug adds the access lines of polls and probes)",
    )
    serve.add_argument("--no-migrate", action="store_true", help="skip `flaas migrate` at start")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="coordinator processes sharing the port (default 1; more use more cores and "
        "need a Redis FLAAS_BROKER_URL and Celery workers)",
    )
    serve.set_defaults(handler=_serve)

    migrate = commands.add_parser("migrate", help="upgrade the database schema")
    migrate.add_argument("--database-url", default=None)
    migrate.add_argument("--revision", default="head")
    migrate.set_defaults(handler=_migrate)

    from server.cli_jobs import add_job_commands

    add_job_commands(commands, _add_server_options)

    adapter = commands.add_parser("adapter", help="download global adapters").add_subparsers(
        dest="adapter_command", required=True
    )
    export = adapter.add_parser(
        "export", help="a round's global adapter as a directory PeftModel.from_pretrained loads"
    )
    export.add_argument("--job", required=True, help="job id (or a unique start of one)")
    export.add_argument("--round", type=int, default=None, help="round (default: the newest)")
    export.add_argument("--out", required=True, help="directory to write the files into")
    _add_server_options(export)
    export.set_defaults(handler=_adapter_export)

    # These commands' options live with their code; those modules import nothing heavy at
    # the top (numpy, httpx, torch only inside functions), so building the parser stays
    # cheap and works on the base install.
    client = commands.add_parser("client", help="take part in a job with your own data")
    _lazy("client_sdk.cli", "add_arguments")(client)
    simulate = commands.add_parser(
        "simulate", help="run N simulated clients on a built-in task against a coordinator"
    )
    _lazy("client_sdk.simulate", "add_arguments")(simulate)
    simulate.set_defaults(handler=_lazy_handler("client_sdk.simulate", "main"))
    demo = commands.add_parser(
        "demo", help="start a coordinator, run a simulated federated job, print the results"
    )
    _lazy("server.demo", "add_arguments")(demo)
    demo.set_defaults(handler=_lazy_handler("server.demo", "main"))
    worker = commands.add_parser(
        "worker", help="run a Celery aggregation worker (production; needs FLAAS_BROKER_URL)"
    )
    _lazy("server.worker_cli", "add_worker_arguments")(worker)
    worker.set_defaults(handler=_lazy_handler("server.worker_cli", "run_worker"))
    beat = commands.add_parser(
        "beat", help="run Celery beat: the periodic deadline check (with FLAAS_BROKER_URL)"
    )
    _lazy("server.worker_cli", "add_beat_arguments")(beat)
    beat.set_defaults(handler=_lazy_handler("server.worker_cli", "run_beat"))
    return parser


def _lazy(module: str, name: str) -> Callable[..., Any]:
    import importlib

    function: Callable[..., Any] = getattr(importlib.import_module(module), name)
    return function


def _lazy_handler(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    """A handler that imports ``module`` only when the command actually runs."""

    def handler(args: argparse.Namespace) -> int:
        result: int = _lazy(module, name)(args)
        return result

    return handler


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (``error: ...; see flaas job --help``), no usage dump.

    Subcommand parsers are made by ``add_parser`` with the parent's class, so all share it."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; an expected failure prints one ``error: ...`` line, exit status 1.

    Expected: the coordinator unreachable, a 4xx with its detail, a missing or unreadable
    file, a bad value, a missing extra. Anything else is a bug and keeps its traceback."""
    from client_sdk.cli_errors import error_sentence, one_line

    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except SystemExit as exc:
        if not isinstance(exc.code, str):
            raise
        text = one_line(exc.code)
        print(text if text.startswith("error:") else f"error: {text}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        sentence = error_sentence(exc)
        if sentence is None:
            raise
        print(f"error: {sentence}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
