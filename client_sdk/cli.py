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
    "your data: .npz with arrays X (one row per sample) and y (class indices), optionally "
    "X_val/y_val; or, for the trec task, a .csv with header text,label or a .jsonl of "
    '{"text": ..., "label": ...} (label = class name or index)'
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``join`` subcommand (and its options) under ``flaas client``."""
    commands = parser.add_subparsers(dest="client_command", required=True)
    join = commands.add_parser(
        "join",
        help="join a job and train on your data until it ends",
        description="Join a job and train on your own data until the job ends. Safe to "
        "interrupt and re-run: progress is kept in --state-dir.",
    )
    join.add_argument("--server", default=os.environ.get("FLAAS_SERVER"), required=False)
    join.add_argument("--job", required=True, help="the job id")
    join.add_argument(
        "--token", default=os.environ.get("FLAAS_JOIN_TOKEN"), help="the job's join token"
    )
    join.add_argument("--data", required=True, help=DATA_HELP)
    join.add_argument("--task", default="digits", help="built-in model: digits, mnist or trec")
    join.add_argument("--val-fraction", type=float, default=0.2)
    join.add_argument("--name", default=None, help="a name the operator sees")
    join.add_argument("--max-rank", type=int, default=None, help="cap on the assigned rank")
    join.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda:0")
    join.add_argument("--state-dir", default=None, help="default: ~/.flaas/state")
    join.add_argument("--quiet", action="store_true", help="no progress bars")
    join.set_defaults(handler=join_command)


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
    """Run ``flaas client join``."""
    if not args.server:
        raise SystemExit("error: --server (or FLAAS_SERVER) is required")
    try:
        from client_sdk.tasks import get_task
        from client_sdk.trainer import LoraTrainer
    except ImportError as exc:
        raise SystemExit(
            f"error: training needs the train extra ({exc.name} is missing): "
            "pip install 'flaas[train]'"
        ) from None
    from client_sdk.api import ApiError, Unavailable
    from client_sdk.client import Client
    from client_sdk.datafile import load_local_data

    task = get_task(args.task)
    try:
        data = load_local_data(args.data, task, val_fraction=args.val_fraction)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from None
    from client_sdk.simulate import BASE_SEED

    trainer = LoraTrainer(
        lambda: task.build_model(BASE_SEED),
        task.target_modules,
        task.head_modules,
        device=args.device,
    )
    client = Client(
        args.server,
        args.job,
        join_token=args.token,
        state_dir=args.state_dir,
        name=args.name,
        max_rank=args.max_rank,
        on_progress=None if args.quiet else ProgressPrinter(),
    )
    val = None
    if data.x_val is not None and data.y_val is not None:
        val = (data.x_val, data.y_val)
    print(
        f"{len(data.y_train)} training and {0 if val is None else len(val[1])} validation "
        f"samples; device {trainer.device}; state in {client.state.directory}",
        file=sys.stderr,
    )
    try:
        result = client.run(
            trainer, data=(data.x_train, data.y_train), val_data=val, num_classes=task.num_classes
        )
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
