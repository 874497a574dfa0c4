"""``flaas job ...`` and the operator's side of the CLI: the key, requests, job id prefixes.

The operator key is ``--operator-key``, else ``FLAAS_OPERATOR_KEY``, else the first key of
``FLAAS_OPERATOR_KEYS`` (the variable the coordinator reads, so the README's production export
works for both). The development key is used only against a local coordinator: sending it to
any other server would be a silent 401 at best.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from client_sdk.cli_errors import one_line
from server.join import join_link

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
PAGE = 100  # jobs per request when resolving a prefix (within any FLAAS_MAX_PAGE_SIZE)
BAR_WIDTH = 30


def first_key(keys: str) -> str | None:
    """The first key of a ``FLAAS_OPERATOR_KEYS`` value (comma-separated or a JSON list)."""
    text = keys.strip()
    if text.startswith("["):
        try:
            parsed = json.loads(text)
        except ValueError:
            return None
        found = (
            [str(k).strip() for k in parsed if str(k).strip()] if isinstance(parsed, list) else []
        )
    else:
        found = [k.strip() for k in text.split(",") if k.strip()]
    return found[0] if found else None


def is_local(server: str) -> bool:
    """Whether ``server`` is this machine (localhost, 127.0.0.1, ::1)."""
    return urlsplit(server).hostname in LOCAL_HOSTS


def operator_key(explicit: str | None, server: str, environ: Mapping[str, str] = os.environ) -> str:
    """The key to send to ``server``; a clear error instead of a dev key sent elsewhere."""
    if explicit:
        return explicit
    key = environ.get("FLAAS_OPERATOR_KEY", "").strip()
    if key:
        return key
    key = first_key(environ.get("FLAAS_OPERATOR_KEYS", "")) or ""
    if key:
        return key
    if is_local(server):
        from server.config import DEVELOPMENT_OPERATOR_KEY

        return DEVELOPMENT_OPERATOR_KEY
    raise SystemExit(
        f"error: no operator key for {server}: pass --operator-key or set FLAAS_OPERATOR_KEY "
        "(or FLAAS_OPERATOR_KEYS, whose first key is used); the development key is sent only "
        "to a coordinator on this machine"
    )


def operator_client(args: argparse.Namespace, **kwargs: Any) -> Any:
    import httpx

    key = operator_key(args.operator_key, args.server)
    return httpx.Client(
        base_url=args.server,
        headers={"Authorization": f"Bearer {key}"},
        timeout=kwargs.pop("timeout", 30.0),
        **kwargs,
    )


def _detail_of(response: Any) -> str:
    try:
        body = response.json()
    except ValueError:
        return one_line(response.text[:500]) or response.reason_phrase
    detail = body.get("detail", body) if isinstance(body, dict) else body
    return one_line(detail if isinstance(detail, str) else json.dumps(detail))


def send(args: argparse.Namespace, method: str, path: str, **kwargs: Any) -> Any:
    """The coordinator's answer (an ``httpx.Response``); an error exits with one line."""
    import httpx

    try:
        with operator_client(args) as http:
            response = http.request(method, path, **kwargs)
    except httpx.TransportError as exc:
        raise SystemExit(
            f"error: cannot reach the coordinator at {args.server}: {one_line(str(exc))}"
        ) from None
    if response.status_code >= 400:
        raise SystemExit(f"error: {response.status_code}: {_detail_of(response)}")
    return response


def request(args: argparse.Namespace, method: str, path: str, **kwargs: Any) -> Any:
    return send(args, method, path, **kwargs).json()


def _all_jobs(args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    offset = 0
    while True:
        page = request(args, "GET", "/api/v1/jobs", params={"limit": PAGE, "offset": offset})
        yield from page["items"]
        offset += len(page["items"])
        if not page["items"] or offset >= page["total"]:
            return


def resolve_job_id(args: argparse.Namespace, given: str) -> str:
    """A full job id for ``given``: the id itself, or the one job whose id starts with it."""
    text = given.strip().lower()
    try:
        return str(uuid.UUID(text))
    except ValueError:
        pass
    if not text or any(c not in "0123456789abcdef-" for c in text):
        raise SystemExit(f"error: {given!r} is not a job id or the start of one")
    matches = [job["id"] for job in _all_jobs(args) if job["id"].startswith(text)]
    if not matches:
        raise SystemExit(f"error: no job id starts with {given!r} (flaas job list shows them)")
    if len(matches) > 1:
        shown = ", ".join(sorted(matches)[:5]) + (", ..." if len(matches) > 5 else "")
        raise SystemExit(
            f"error: {given!r} is ambiguous: {len(matches)} job ids start with it ({shown}); "
            "give more characters"
        )
    return str(matches[0])


def job_create(args: argparse.Namespace) -> int:
    import yaml

    path = Path(args.file)
    try:
        spec = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SystemExit(f"error: cannot read job file {path}: {one_line(str(exc))}") from None
    if not isinstance(spec, dict):
        raise SystemExit(f"error: {path} must hold a mapping (the job spec)")
    job = request(args, "POST", "/api/v1/jobs", json=spec)
    print(json.dumps(job, indent=2))
    print(
        f"\njob {job['id']} created; clients join with token:\n  {job['join_token']}\n"
        f"a browser (a phone) joins at:\n  {join_link(args.server, job['id'], job['join_token'])}",
        file=sys.stderr,
    )
    return 0


def job_list(args: argparse.Namespace) -> int:
    params = {"limit": args.limit, **({"status": args.status} if args.status else {})}
    page = request(args, "GET", "/api/v1/jobs", params=params)
    print(f"{'id':36}  {'status':10} {'strategy':12} {'round':>9}  {'clients':>7}  name")
    for job in page["items"]:
        progress = f"{job['current_round']}/{job['total_rounds']}"
        print(
            f"{job['id']:36}  {job['status']:10} {job['strategy']:12} {progress:>9}  "
            f"{job['enrolled_clients']:>7}  {job['name']}"
        )
    print(f"({len(page['items'])} of {page['total']})")
    return 0


def job_show(args: argparse.Namespace) -> int:
    job_id = resolve_job_id(args, args.job_id)
    print(json.dumps(request(args, "GET", f"/api/v1/jobs/{job_id}"), indent=2))
    return 0


def job_cancel(args: argparse.Namespace) -> int:
    job_id = resolve_job_id(args, args.job_id)
    job = request(args, "POST", f"/api/v1/jobs/{job_id}/cancel")
    print(f"job {job_id} {job['status']} (round {job['current_round']}/{job['total_rounds']})")
    return 0


def progress_line(event: Mapping[str, Any]) -> str:
    """One line of ``flaas job watch``: a bar of rounds done, the round and its uploads."""
    total = max(int(event["total_rounds"]), 1)
    current = int(event["current_round"])
    status = str(event["status"])
    done = total if status == "finished" else max(current - 1, 0)
    if event.get("round_status") == "closed" and status != "finished":
        done = min(current, total)
    filled = BAR_WIDTH * done // total
    bar = "#" * filled + "." * (BAR_WIDTH - filled)
    if status == "enrolling":
        where = "enrolment open"
    elif event["ended"]:
        where = f"round {current}/{total}"
    else:
        where = f"round {current}/{total} {event.get('round_status') or ''}".rstrip()
        where += f", {event.get('accepted', 0)} update(s) accepted"
    return f"[{bar}] {done}/{total} rounds  {status:9}  {where}"


def _events(http: Any, job_id: str) -> Iterator[dict[str, Any]]:
    """The job's ``progress`` events until the coordinator ends the stream."""
    with http.stream("GET", f"/api/v1/jobs/{job_id}/events") as response:
        if response.status_code >= 400:
            response.read()
            raise SystemExit(f"error: {response.status_code}: {_detail_of(response)}")
        kind = ""
        for line in response.iter_lines():
            if line.startswith("event:"):
                kind = line.partition(":")[2].strip()
            elif line.startswith("data:") and kind == "progress":
                yield json.loads(line.partition(":")[2])


def job_watch(args: argparse.Namespace, stream: IO[str] | None = None) -> int:
    """Follow a job's server-sent events, one bar per change, until the job ends."""
    import httpx

    out = stream or sys.stdout
    tty = out.isatty()
    job_id = resolve_job_id(args, args.job_id)
    last = ""
    event: dict[str, Any] | None = None
    # Keepalives come every 15 s; a stream the coordinator ends (every 5 min) is reopened.
    with operator_client(args, timeout=httpx.Timeout(10.0, read=60.0)) as http:
        while event is None or not event["ended"]:
            try:
                for event in _events(http, job_id):
                    line = progress_line(event)
                    if line != last:
                        out.write(f"\r{line}\x1b[K" if tty else line + "\n")
                        out.flush()
                        last = line
            except httpx.TransportError as exc:
                raise SystemExit(
                    f"error: lost the coordinator at {args.server}: {one_line(str(exc))}"
                ) from None
            if event is None or not event["ended"]:
                time.sleep(1.0)
    if tty:
        out.write("\n")
    job = request(args, "GET", f"/api/v1/jobs/{job_id}")
    reason = f": {job['failure_reason']}" if job.get("failure_reason") else ""
    out.write(f"job {job_id} {job['status']}{reason}\n")
    return 0 if job["status"] == "finished" else 1


def add_job_commands(commands: Any, add_server_options: Any) -> None:
    """``flaas job create | list | show | cancel | watch``."""
    job = commands.add_parser("job", help="create, inspect, watch and cancel jobs")
    sub = job.add_subparsers(dest="job_command", required=True)
    create = sub.add_parser("create", help="create a job from a YAML spec")
    create.add_argument("--file", required=True)
    create.set_defaults(handler=job_create)
    listing = sub.add_parser("list", help="list jobs")
    listing.add_argument("--status", default=None)
    listing.add_argument("--limit", type=int, default=50)
    listing.set_defaults(handler=job_list)
    prefix = "a job id or a unique start of one (as in `flaas job list`)"
    show = sub.add_parser("show", help="show one job")
    show.add_argument("job_id", help=prefix)
    show.set_defaults(handler=job_show)
    cancel = sub.add_parser("cancel", help="cancel an enrolling or running job")
    cancel.add_argument("job_id", help=prefix)
    cancel.set_defaults(handler=job_cancel)
    watch = sub.add_parser(
        "watch", help="follow a job's rounds live (a progress bar) until it ends"
    )
    watch.add_argument("job_id", help=prefix)
    watch.set_defaults(handler=job_watch)
    for parser in (create, listing, show, cancel, watch):
        add_server_options(parser)
