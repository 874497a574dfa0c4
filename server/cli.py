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
from typing import Any

DEFAULT_SERVER = "http://127.0.0.1:8000"


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from server.config import get_settings
    from server.db.migrate import upgrade
    from server.main import create_app

    settings = get_settings()
    if not args.no_migrate:
        upgrade(settings.database_url)
    print(f"flaas coordinator on http://{args.host}:{args.port}  (API docs at /docs)", flush=True)
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=args.log_level)
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from server.config import get_settings
    from server.db.migrate import current, upgrade

    url = args.database_url or get_settings().database_url
    upgrade(url, args.revision)
    print(f"database at revision {current(url)}")
    return 0


def _operator_client(args: argparse.Namespace) -> Any:
    import httpx

    key = args.operator_key or os.environ.get("FLAAS_OPERATOR_KEY")
    if not key:
        from server.config import DEVELOPMENT_OPERATOR_KEY

        key = DEVELOPMENT_OPERATOR_KEY
    return httpx.Client(
        base_url=args.server, headers={"Authorization": f"Bearer {key}"}, timeout=30.0
    )


def _send(args: argparse.Namespace, method: str, path: str, **kwargs: Any) -> Any:
    """The coordinator's answer (an ``httpx.Response``); an error exits with its message."""
    import httpx

    try:
        with _operator_client(args) as http:
            response = http.request(method, path, **kwargs)
    except httpx.TransportError as exc:
        raise SystemExit(f"error: cannot reach the coordinator at {args.server}: {exc}") from None
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail")
        except ValueError:
            detail = response.text
        raise SystemExit(f"error: {response.status_code}: {json.dumps(detail, indent=2)}")
    return response


def _request(args: argparse.Namespace, method: str, path: str, **kwargs: Any) -> Any:
    return _send(args, method, path, **kwargs).json()


def _job_create(args: argparse.Namespace) -> int:
    import yaml

    path = Path(args.file)
    try:
        spec = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SystemExit(f"error: cannot read job file {path}: {exc}") from None
    if not isinstance(spec, dict):
        raise SystemExit(f"error: {path} must hold a mapping (the job spec)")
    job = _request(args, "POST", "/api/v1/jobs", json=spec)
    print(json.dumps(job, indent=2))
    print(
        f"\njob {job['id']} created; clients join with token:\n  {job['join_token']}",
        file=sys.stderr,
    )
    return 0


def _job_list(args: argparse.Namespace) -> int:
    params = {"limit": args.limit, **({"status": args.status} if args.status else {})}
    page = _request(args, "GET", "/api/v1/jobs", params=params)
    print(f"{'id':36}  {'status':10} {'strategy':12} {'round':>9}  {'clients':>7}  name")
    for job in page["items"]:
        progress = f"{job['current_round']}/{job['total_rounds']}"
        print(
            f"{job['id']:36}  {job['status']:10} {job['strategy']:12} {progress:>9}  "
            f"{job['enrolled_clients']:>7}  {job['name']}"
        )
    print(f"({len(page['items'])} of {page['total']})")
    return 0


def _job_show(args: argparse.Namespace) -> int:
    print(json.dumps(_request(args, "GET", f"/api/v1/jobs/{args.job_id}"), indent=2))
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
    response = _send(args, "GET", f"/api/v1/jobs/{args.job}/adapter", params=params)
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
        f"job {args.job} round {lineage['round']}: rank {config['r']}, "
        f"lora_alpha {config['lora_alpha']}, adapter_model.safetensors sha256 {weights}"
    )
    return 0


def _add_server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", default=os.environ.get("FLAAS_SERVER", DEFAULT_SERVER))
    parser.add_argument(
        "--operator-key", default=None, help="operator API key (default: $FLAAS_OPERATOR_KEY)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flaas", description="Federated LoRA fine-tuning as a service."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the coordinator (embedded defaults)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--log-level", default="info")
    serve.add_argument("--no-migrate", action="store_true", help="skip `flaas migrate` at start")
    serve.set_defaults(handler=_serve)

    migrate = commands.add_parser("migrate", help="upgrade the database schema")
    migrate.add_argument("--database-url", default=None)
    migrate.add_argument("--revision", default="head")
    migrate.set_defaults(handler=_migrate)

    job = commands.add_parser("job", help="create and inspect jobs").add_subparsers(
        dest="job_command", required=True
    )
    create = job.add_parser("create", help="create a job from a YAML spec")
    create.add_argument("--file", required=True)
    create.set_defaults(handler=_job_create)
    listing = job.add_parser("list", help="list jobs")
    listing.add_argument("--status", default=None)
    listing.add_argument("--limit", type=int, default=50)
    listing.set_defaults(handler=_job_list)
    show = job.add_parser("show", help="show one job")
    show.add_argument("job_id")
    show.set_defaults(handler=_job_show)
    for sub in (create, listing, show):
        _add_server_options(sub)

    adapter = commands.add_parser("adapter", help="download global adapters").add_subparsers(
        dest="adapter_command", required=True
    )
    export = adapter.add_parser(
        "export", help="a round's global adapter as a directory PeftModel.from_pretrained loads"
    )
    export.add_argument("--job", required=True, help="job id")
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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
