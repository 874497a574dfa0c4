"""Pretrained against random built-in bases: what pretraining costs and what it leaves to learn.

Run: ``.venv/bin/python bench/bases.py`` (a few minutes on two cores). For ``digits`` and
``mnist`` it measures

* **pretraining**: wall time of one build of the pretrained base (an empty cache, one thread,
  the recipe of client_sdk.model_spec.PRETRAIN_RECIPE) and of reading it back from the cache;
* **federated headroom**: 8 clients (the task's pool, Dirichlet 0.5, seed 0), FedAvg weighted
  by samples, 10 rounds of the task's local training, all clients every round; held-out test
  accuracy of the final global model when the federation trains the head alone (fc3; LoRA
  frozen at B = 0), or the head plus LoRA rank 2 or 16 on fc1 and fc2 (scale 2), on the
  pretrained base and on the random one (``-random``).

Runs in-process with the SDK's trainer (no coordinator: the point is the base, not the
platform); prints a Markdown table for the README's "Built-in bases" section.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from peft import get_peft_model_state_dict  # noqa: E402

from client_sdk.bases import pretrained_base  # noqa: E402
from client_sdk.model_spec import BUILTIN_CONFIGS  # noqa: E402
from client_sdk.simulate import make_shards  # noqa: E402
from client_sdk.tasks import get_task  # noqa: E402
from client_sdk.tasks.vision import public_split  # noqa: E402
from client_sdk.trainer import LoraTrainer  # noqa: E402
from client_sdk.trainer_settings import AdapterConfig, TrainSettings  # noqa: E402
from client_sdk.wire_format import decode_update  # noqa: E402

CLIENTS, ROUNDS, ALPHA, SEED = 8, 10, 0.5, 0
#: name -> (rank, the parts the clients train and share; None: LoRA A, B and the head).
SETUPS: dict[str, tuple[int, set[str] | None]] = {
    "head only": (2, {"extra"}),
    "r2": (2, None),
    "r16": (16, None),
}


def pretraining_seconds(dataset: str) -> tuple[float, float]:
    """(build, cached read) seconds of the pretrained base of ``dataset``."""
    public_split(dataset)  # read the data first: the timing is the training's
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        built = pretrained_base(BUILTIN_CONFIGS[dataset], cache=Path(tmp))
        build = time.perf_counter() - started
        started = time.perf_counter()
        again = pretrained_base(BUILTIN_CONFIGS[dataset], cache=Path(tmp))
        assert built.built and not again.built
        return build, time.perf_counter() - started


def federate(task_name: str, rank: int, shared: set[str] | None, alpha: float = ALPHA) -> float:
    """Final global test accuracy of FedAvg over the task's shards (``shared=None``: all)."""
    task = get_task(task_name)
    data = task.load(seed=0)
    shards = make_shards(data.y_train, data.x_train, CLIENTS, alpha, seed=SEED)
    parts = shared or {"lora_A", "lora_B", "extra"}
    frozen = {"lora_A", "lora_B"} - parts
    adapter = AdapterConfig(rank, lora_alpha=2.0 * rank)
    trainer = LoraTrainer(task.model_spec(), device="cpu")
    initial = get_peft_model_state_dict(trainer.peft_model(adapter))
    global_state: dict[str, torch.Tensor] = {k: v.detach().clone() for k, v in initial.items()}
    settings = TrainSettings.from_dict(task.default_settings)
    for round_index in range(ROUNDS):
        updates: list[tuple[int, Mapping[str, torch.Tensor]]] = []
        for client, shard in enumerate(shards):
            result = trainer.train(
                adapter,
                incoming=global_state,
                shared_parts=parts,
                frozen_parts=frozen,
                train_data=task.dataset(shard.x_train, shard.y_train),
                settings=settings.replace(seed=SEED * 1000 + round_index * 100 + client),
            )
            updates.append((result.n_samples, decode_update(result.update)[0]))
        total = sum(n for n, _ in updates)
        for key in updates[0][1]:
            global_state[key] = torch.stack([n / total * u[key] for n, u in updates]).sum(0)
    test = task.dataset(data.x_test, data.y_test)
    return trainer.evaluate(adapter, incoming=global_state, data=test)["accuracy"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["digits", "mnist"])
    parser.add_argument("--alpha", type=float, default=ALPHA, help="Dirichlet label skew")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    timing = ["| base | pretraining (s) | cached read (s) |", "|---|---|---|"]
    table = ["| task | " + " | ".join(SETUPS) + " |", "|---|" + "---|" * len(SETUPS)]
    for dataset in args.datasets:
        build, read = pretraining_seconds(dataset)
        timing.append(f"| flaas:{dataset} | {build:.2f} | {read:.3f} |")
        print(timing[-1], flush=True)
        for task_name in (dataset, f"{dataset}-random"):
            scores = [federate(task_name, r, parts, args.alpha) for r, parts in SETUPS.values()]
            table.append(f"| {task_name} | " + " | ".join(f"{s:.3f}" for s in scores) + " |")
            print(table[-1], flush=True)
    print("\n" + "\n".join(timing) + "\n\n" + "\n".join(table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
