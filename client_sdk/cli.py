"""``flaas client join``: take part in a job with this device's own data.

Only argparse is imported at module level, so ``flaas client --help`` works on the base
install; training needs the ``train`` extra (torch, peft) and says so if it is missing.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import IO, Any

SIZE_UNITS = ("B", "KiB", "MiB", "GiB")

DATA_HELP = (
    'your data. For a Hugging Face causal LM: .jsonl lines of {"prompt": ..., '
    '"completion": ...} or {"text": ...}; for a classifier: .csv with the header '
    'text,label or .jsonl lines of {"text": ..., "label": ...} (label = class name or '
    "index); for the built-in flaas:* models (flaas:digits, flaas:mnist, ...): .npz with arrays "
    "X (one row "
    "per sample, values in [0, 1]) and y (class indices), optionally X_val / y_val"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``join`` and ``export`` subcommands (and their options) under ``flaas client``."""
    commands = parser.add_subparsers(dest="client_command", required=True)
    join = commands.add_parser(
        "join",
        help="join a job and train on your data until it ends",
        description="Join a job and train on your own data until the job ends. Safe to "
        "interrupt and re-run: progress is kept in --state-dir.",
    )
    join.add_argument("--server", default=os.environ.get("FLAAS_SERVER"), required=False)
    join.add_argument("--job", required=True, help="the full job id")
    join.add_argument(
        "--token", default=os.environ.get("FLAAS_JOIN_TOKEN"), help="the job's join token"
    )
    join.add_argument("--data", required=True, help=DATA_HELP)
    join.add_argument(
        "--model",
        default=None,
        help="where this device has the job's model: a directory written by save_pretrained "
        "or a Hugging Face id in the local cache (default: the job's model.source)",
    )
    join.add_argument("--val-data", default=None, help="a validation file (same format)")
    join.add_argument(
        "--val-fraction", type=float, default=0.2, help="held out when --val-data is not given"
    )
    join.add_argument("--max-seq-len", type=int, default=512, help="tokens per text sample")
    join.add_argument("--name", default=None, help="a name the operator sees")
    join.add_argument("--max-rank", type=int, default=None, help="cap on the assigned rank")
    join.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda:0")
    join.add_argument(
        "--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
        help="autocast on CUDA (auto: bf16 where supported); the CPU trains in fp32",
    )  # fmt: skip
    join.add_argument("--state-dir", default=None, help="default: ~/.flaas/state")
    join.add_argument("--quiet", action="store_true", help="no progress bars")
    join.set_defaults(handler=join_command)
    export = commands.add_parser(
        "export",
        help="write this device's personalised adapter in peft's format",
        description="Write the device's adapter (the newest global A with its private B and "
        "head, as FedSA-LoRA trains them) into a directory PeftModel.from_pretrained loads.",
    )
    export.add_argument("--state-dir", default=None, help="default: ~/.flaas/state")
    export.add_argument("--job", default=None, help="the job, when the state holds several")
    export.add_argument("--out", required=True, help="the directory to write")
    export.set_defaults(handler=export_command)


def _size(n: float) -> str:
    for unit in SIZE_UNITS:
        if n < 1024 or unit == SIZE_UNITS[-1]:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f}"


class ProgressPrinter:
    """A tiny progress display on ``stream``: redrawn bars on a terminal, plain lines if not."""

    WIDTH = 24

    def __init__(self, stream: IO[str] | None = None, min_interval_s: float = 0.1) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.min_interval_s = min_interval_s
        self._last_draw = 0.0
        self._open = False
        self._last_wait = ""

    def __call__(self, p: Any) -> None:
        """Render one :class:`client_sdk.rounds.Progress` event."""
        label = f"round {p.round}" if p.round is not None else ""
        if p.event in ("download", "upload", "train"):
            what = {"download": "download", "upload": "upload  ", "train": "train   "}[p.event]
            if p.event == "train":
                amount = f"{p.done}/{p.total} steps"
            else:
                amount = f"{_size(p.done)}/{_size(p.total or p.done)}"
            self._bar(f"{label} {what}", p.done, p.total, amount)
        elif p.event == "waiting":
            if p.message != self._last_wait:
                self._line(f"waiting: {p.message}")
                self._last_wait = p.message
        elif p.event == "finished":
            self._line(p.message)
        else:
            self._last_wait = ""
            detail = f" {p.message}" if p.message else ""
            self._line(f"{label + ' ' if label else ''}{p.event}{detail}")

    def _bar(self, label: str, done: int, total: int | None, amount: str) -> None:
        finished = total is not None and done >= total
        now = time.monotonic()
        if not finished and now - self._last_draw < self.min_interval_s:
            return  # throttle redraws; the final state is always drawn
        self._last_draw = now
        filled = int(self.WIDTH * done / total) if total else 0
        bar = "#" * filled + "." * (self.WIDTH - filled)
        text = f"{label} [{bar}] {amount}"
        if self.tty:
            self.stream.write(f"\r{text}\x1b[K")
            self._open = True
            if finished:
                self.stream.write("\n")
                self._open = False
        elif finished:
            self.stream.write(text + "\n")
        self.stream.flush()

    def _line(self, text: str) -> None:
        if self._open:
            self.stream.write("\n")
            self._open = False
        self.stream.write(text + "\n")
        self.stream.flush()


def join_command(args: argparse.Namespace) -> int:
    """Run ``flaas client join``: everything is checked before torch is imported."""
    if not args.server:
        raise SystemExit("error: --server (or FLAAS_SERVER) is required")
    if not 0 <= args.val_fraction < 1:
        raise SystemExit("error: --val-fraction must lie in [0, 1)")
    if args.max_seq_len < 2:
        raise SystemExit("error: --max-seq-len must be at least 2")
    for option, path in (("--data", args.data), ("--val-data", args.val_data)):
        if path is not None and not os.path.isfile(path):
            raise SystemExit(f"error: {option} {path}: no such file")
    from client_sdk.api import ApiError, Unavailable
    from client_sdk.client import Client
    from client_sdk.device_data import read_training_data
    from client_sdk.model_spec import ModelNotFound, locate_model

    client = Client(
        args.server,
        args.job,
        join_token=args.token,
        state_dir=args.state_dir,
        name=args.name,
        max_rank=args.max_rank,
        on_progress=None if args.quiet else ProgressPrinter(),
    )
    try:
        spec = client.model_spec()
        if spec is None:
            raise SystemExit(
                f"error: job {args.job} names no model (its modules were written by hand): "
                "train with your own code through client_sdk.Client.run"
            )
        location = locate_model(args.model or spec.source, spec.revision)
        if spec.config_sha256 is not None and location.config_sha256 != spec.config_sha256:
            raise SystemExit(
                f"error: {args.model or spec.source} is not the job's model {spec.source}: its "
                f"config hashes to {location.config_sha256[:12]}..., the job's to "
                f"{spec.config_sha256[:12]}... (another architecture, size or head?)"
            )
        raw = read_training_data(args.data, args.val_data, spec)
    except (ApiError, Unavailable, ModelNotFound, ValueError, OSError) as exc:
        raise SystemExit(f"error: {exc}") from None
    try:
        from client_sdk.trainer import LoraTrainer
    except ImportError as exc:
        raise SystemExit(
            f"error: training needs the train extra ({exc.name} is missing): "
            "pip install 'flaas[train]'"
        ) from None
    trainer = LoraTrainer(spec, location=location, device=args.device, precision=args.precision)
    try:
        train, val = raw.datasets(
            trainer.location, max_seq_len=args.max_seq_len, val_fraction=args.val_fraction
        )
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(
        f"{len(train)} training and {0 if val is None else len(val)} validation samples; "
        f"model {location.path or spec.source}; device {trainer.device}; "
        f"state in {client.state.directory}",
        file=sys.stderr,
    )
    try:
        result = client.run(trainer, data=train, val_data=val)
    except (ApiError, Unavailable, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from None
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to resume", file=sys.stderr)
        return 130
    print(
        f"job {result.status}; {len(result.accepted_rounds)} update(s) accepted, "
        f"{_size(result.bytes_uploaded)} uploaded",
        file=sys.stderr,
    )
    return 0 if result.status == "finished" else 1


def export_command(args: argparse.Namespace) -> int:
    """Run ``flaas client export``."""
    from client_sdk.api import ApiError, Unavailable
    from client_sdk.client import DEFAULT_STATE_DIR
    from client_sdk.device_export import export_personalised, find_job_state

    try:
        state = find_job_state(args.state_dir or DEFAULT_STATE_DIR, args.job)
        done = export_personalised(state, args.out)
    except (ApiError, Unavailable, ValueError, OSError) as exc:
        raise SystemExit(f"error: {exc}") from None
    print(
        f"wrote {done.directory}: adapter_config.json, adapter_model.safetensors, "
        f"flaas_lineage.json (rank {done.rank}, B from round {done.round}, "
        f"sha256 {done.adapter_sha256[:16]}...)"
    )
    return 0
