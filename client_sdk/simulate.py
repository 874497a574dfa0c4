"""``flaas simulate``: N SDK clients on a built-in task against any coordinator.

The task's training data is split over the clients with a Dirichlet label skew (and optional
log-normal quantity skew, see :func:`client_sdk.splits.dirichlet_split`); each client keeps
20 % of its shard as its local validation split. Clients run as threads of this process: all of
them poll, but at most ``concurrency`` train at the same time (one at a time where training draws
from torch's RNG, dropout: :attr:`~client_sdk.trainer.LoraTrainer.trains_at_random`). Every
client is a real :class:`~client_sdk.Client` talking HTTP, with its own state directory, named
``sim-000``, ``sim-001``, ...: the same names in every run, so a rerun with the job's seed
trains the same updates. Needs the ``train`` extra.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported inside the functions: `flaas --help` must stay light
    import numpy as np

    from client_sdk.rounds import LocalUpdate, Progress, RoundContext, RunResult

VAL_FRACTION = 0.2


@dataclass(frozen=True)
class Shard:
    """One simulated client's data: its training and local validation arrays."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray


def make_shards(
    y: np.ndarray,
    x: np.ndarray,
    n_clients: int,
    alpha: float,
    *,
    quantity_skew: float | None = None,
    seed: int = 0,
) -> list[Shard]:
    """Dirichlet non-IID shards, each cut into train / validation (deterministic per seed)."""
    import numpy as np

    from client_sdk.splits import dirichlet_split

    rng = np.random.default_rng(seed + 1)
    shards = []
    for idx in dirichlet_split(
        y, n_clients, alpha, min_size=20, seed=seed, quantity_skew=quantity_skew
    ):
        order = rng.permutation(idx)
        n_val = max(2, int(round(len(order) * VAL_FRACTION)))
        val, train = order[:n_val], order[n_val:]
        shards.append(Shard(x[train], y[train], x[val], y[val]))
    return shards


def run_simulation(
    server: str,
    job_id: str,
    join_token: str,
    *,
    task: str = "digits",
    clients: int = 8,
    alpha: float = 0.5,
    quantity_skew: float | None = None,
    concurrency: int = 2,
    seed: int = 0,
    state_dir: str | Path | None = None,
    on_progress: Callable[[int, Progress], None] | None = None,
    stop: threading.Event | None = None,
    max_ranks: Sequence[int] | None = None,
) -> list[RunResult]:
    """Run ``clients`` simulated clients until the job ends; one RunResult per client.

    ``max_ranks`` gives each client's declared capacity (the coordinator caps its rank)."""
    import torch

    from client_sdk.client import Client
    from client_sdk.lora_round import LoraRound
    from client_sdk.tasks import get_task
    from client_sdk.trainer import LoraTrainer

    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    if max_ranks is not None and len(max_ranks) != clients:
        raise ValueError(f"max_ranks has {len(max_ranks)} entries for {clients} clients")
    # Threads share the cores: one torch thread each avoids oversubscribing them.
    torch.set_num_threads(1)
    spec = get_task(task)
    data = spec.load(seed=0)
    shards = make_shards(
        data.y_train, data.x_train, clients, alpha, quantity_skew=quantity_skew, seed=seed
    )
    model = spec.model_spec()
    if not model.is_builtin:
        from transformers.utils import logging as transformers_logging

        # One "Loading weights" bar per simulated client and round would bury the output.
        transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # unannotated
    gate = threading.Semaphore(concurrency)
    root = Path(state_dir) if state_dir else Path(tempfile.mkdtemp(prefix="flaas-sim-"))
    sdk_clients: list[Client] = []

    def one(i: int) -> RunResult:
        shard = shards[i]
        inner = LoraRound(
            LoraTrainer(model),
            spec.dataset(shard.x_train, shard.y_train),
            spec.dataset(shard.x_val, shard.y_val),
        )

        def gated(ctx: RoundContext) -> LocalUpdate:
            with gate:
                return inner(ctx)

        gated.stats = inner.stats  # type: ignore[attr-defined]
        gated.model_sha256 = inner.model_sha256  # type: ignore[attr-defined]
        client = Client(
            server,
            job_id,
            join_token=join_token,
            state_dir=root / f"client-{i:03d}",
            name=f"sim-{i:03d}",
            max_rank=max_ranks[i] if max_ranks is not None else None,
            on_progress=(lambda p: on_progress(i, p)) if on_progress else None,
        )
        sdk_clients.append(client)
        return client.run(gated)

    with ThreadPoolExecutor(max_workers=clients, thread_name_prefix="flaas-sim") as pool:
        futures = [pool.submit(one, i) for i in range(clients)]
        pending = set(futures)
        while pending:
            _, pending = wait(pending, timeout=0.2)
            failed = any(f.done() and f.exception() is not None for f in futures)
            if failed or (stop is not None and stop.is_set()):
                # One client crashed (or the caller gave up): stop the others instead of
                # leaving them polling a job that can no longer finish as planned.
                for client in list(sdk_clients):
                    client.stop()
    return [f.result() for f in futures]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``flaas simulate`` options."""
    parser.add_argument("--server", required=True, help="coordinator base URL")
    parser.add_argument("--job", required=True, help="the full job id")
    parser.add_argument("--token", required=True, help="the job's join token")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument(
        "--task",
        default="digits",
        help="a built-in task: digits, mnist (pretrained bases), digits-random, mnist-random, "
        "mnist-rbla (random bases) or trec",
    )
    parser.add_argument("--alpha", type=float, default=0.5, help="Dirichlet label skew")
    parser.add_argument(
        "--quantity-skew", type=float, default=None, help="log-normal sigma of client sizes"
    )
    parser.add_argument("--concurrency", type=int, default=2, help="clients training at once")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--state-dir", default=None, help="default: a new temporary directory")


def check_before_training(
    server: str, job_id: str, join_token: str, clients: int, concurrency: int
) -> None:
    """The arguments, the coordinator and the join token, checked before torch is imported:
    a coordinator that is down or a wrong token is reported in seconds, in one sentence."""
    from client_sdk.api import ApiClient, RetryPolicy

    if clients < 1:
        raise ValueError(f"--clients must be at least 1, not {clients}")
    if concurrency < 1:
        raise ValueError(f"--concurrency must be at least 1, not {concurrency}")
    with ApiClient(server, retry=RetryPolicy(attempts=3, base_s=0.25, max_s=1.0)) as api:
        api.job_model(job_id, join_token)


def main(args: argparse.Namespace) -> int:
    """``flaas simulate``: print one line per accepted update and a final summary."""

    check_before_training(args.server, args.job, args.token, args.clients, args.concurrency)

    def show(i: int, p: Progress) -> None:
        if p.event in ("accepted", "skipped", "enrolled"):
            where = f"round {p.round}" if p.round is not None else ""
            print(f"client {i:3d} {p.event:8} {where} {p.message}", flush=True)

    results = run_simulation(
        args.server,
        args.job,
        args.token,
        task=args.task,
        clients=args.clients,
        alpha=args.alpha,
        quantity_skew=args.quantity_skew,
        concurrency=args.concurrency,
        seed=args.seed,
        state_dir=args.state_dir,
        on_progress=show,
    )
    uploaded = sum(r.bytes_uploaded for r in results)
    statuses = sorted({r.status for r in results})
    print(f"{len(results)} clients done ({', '.join(statuses)}); {uploaded} bytes uploaded")
    return 0 if statuses == ["finished"] else 1


def _standalone(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="flaas simulate")
    add_arguments(parser)
    return main(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(_standalone())
