"""Round overhead: ``flaas demo`` against a plain PyTorch loop on the same task, clients, splits.

Run: ``.venv/bin/python bench/round_floor.py`` (``--rounds 12 --repeats 3``). Both sides run the
digits task, 10 clients with the demo's Dirichlet 0.5 shards (seed 0), FedAvg at a fixed rank 8
(the ``fedit`` strategy, LoRA on fc1/fc2, the head fc3 trained in full), the task's local
settings (Adam 1e-2, batch 16, one epoch), two clients training at a time with one torch thread
each (the demo's ``concurrency``), every client scoring its validation split, and the global
model scored on the test set once per round.

* **platform**: ``flaas demo --strategy fedit`` as a subprocess on a fresh data directory; its
  SQLite database gives each round's ``opened_at`` / ``closed_at``. A steady-state round is the
  median of ``closed_at[n] - closed_at[n-1]`` from round 3 on (rounds run back to back); the
  start-up figure is round 1's ``opened_at`` minus the moment the process was started.
* **floor**: the framework-free loop in this process: the project's digits MLP, peft's
  ``get_peft_model``, ``torch.optim.Adam``, a weighted average of the clients' LoRA state dicts.
  No HTTP, database, files or serialisation. Its round is the median over the same rounds.

* **Flower** (``--flower-python PYTHON``, an interpreter with flwr 1.42 that can also import this
  project): ``bench/flower_round.py``, Flower's gRPC server and FedAvg with the same clients,
  shards and local training (``Digits.train``); its round is the median gap between successive
  aggregations from round 3 on.

The ratio platform / floor is what issue 13 targets (<= 1.2x; Flower: 1.25x here). A venv for
the Flower side that sees this project's packages::

    python3.11 -m venv /tmp/flwr && /tmp/flwr/bin/pip install flwr==1.42.0
    pth=/tmp/flwr/lib/python3.11/site-packages/flaas.pth  # after flwr's own packages
    printf '%s\n' "$PWD/.venv/lib/python3.11/site-packages" "$PWD" > $pth
"""

from __future__ import annotations

import argparse
import copy
import json
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
CLIENTS, ALPHA, RANK, CONCURRENCY = 10, 0.5, 8, 2


def platform_round(rounds: int) -> tuple[float, float, list[float]]:
    """(seconds from process start to round 1 open, median steady round, every round gap)."""
    with tempfile.TemporaryDirectory(prefix="flaas-floor-") as scratch:
        started = datetime.now(UTC)
        command = [sys.executable, "-m", "server.cli", "demo", "--strategy", "fedit"]
        command += ["--rounds", str(rounds), "--clients", str(CLIENTS), "--alpha", str(ALPHA)]
        subprocess.run(
            [*command, "--data-dir", scratch], cwd=ROOT, check=True, stdout=subprocess.DEVNULL
        )
        with sqlite3.connect(Path(scratch) / "flaas.db") as db:
            rows = db.execute("SELECT opened_at, closed_at FROM rounds ORDER BY number").fetchall()
    stamps = [(_utc(opened), _utc(closed)) for opened, closed in rows]
    startup = (stamps[0][0] - started).total_seconds()
    gaps = [(b[1] - a[1]).total_seconds() for a, b in zip(stamps, stamps[1:], strict=False)]
    return startup, statistics.median(gaps[1:]), gaps


def _utc(stamp: str) -> datetime:
    value = datetime.fromisoformat(stamp)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class Digits:
    """The task both loops train: the demo's shards and settings, a rank-8 LoRA on fc1/fc2 of
    the project's digits MLP (fc3 trained in full), and the local round each client runs."""

    def __init__(self) -> None:
        from client_sdk.simulate import make_shards
        from client_sdk.tasks import get_task
        from client_sdk.trainer import LoraTrainer

        torch.set_num_threads(1)
        task = get_task("digits")
        data = task.load(seed=0)
        self.shards = make_shards(data.y_train, data.x_train, CLIENTS, ALPHA, seed=0)
        self.settings = task.default_settings
        self.base = LoraTrainer(task.model_spec(), device="cpu").base_model()
        self.config = LoraConfig(
            r=RANK, lora_alpha=2 * RANK, target_modules=["fc1", "fc2"], modules_to_save=["fc3"]
        )
        self.x_test, self.y_test = torch.as_tensor(data.x_test), torch.as_tensor(data.y_test)

    def model(self) -> nn.Module:
        return get_peft_model(copy.deepcopy(self.base), self.config)

    def train(self, model: nn.Module, index: int, state: dict, seed: int) -> tuple[dict, int]:
        """One client's local round from the global ``state``: its LoRA state and sample count."""
        shard = self.shards[index]
        set_peft_model_state_dict(model, state)
        x, y = torch.as_tensor(shard.x_train), torch.as_tensor(shard.y_train)
        params = [p for p in model.parameters() if p.requires_grad]
        optimiser = torch.optim.Adam(params, lr=self.settings["lr"])
        generator = torch.Generator().manual_seed(seed)
        model.train()
        for batch in torch.randperm(len(y), generator=generator).split(self.settings["batch_size"]):
            optimiser.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimiser.step()
        model.eval()
        with torch.no_grad():
            model(torch.as_tensor(shard.x_val)).argmax(1)  # the clients' val_accuracy
        trained = {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
        return trained, len(y)

    def accuracy(self, model: nn.Module, state: dict) -> float:
        """The global ``state``'s accuracy on the test set."""
        set_peft_model_state_dict(model, state)
        with torch.no_grad():
            predicted = model(self.x_test).argmax(1)
        return float((predicted == self.y_test).float().mean())


def floor_round(rounds: int) -> tuple[float, float]:
    """(median round seconds, final test accuracy) of the plain loop."""
    digits = Digits()
    models = [digits.model() for _ in range(CONCURRENCY)]
    global_state = get_peft_model_state_dict(models[0])

    def slot(worker: int, indices: list[int], number: int) -> list[tuple[dict, int]]:
        return [digits.train(models[worker], i, global_state, number * 1000 + i) for i in indices]

    times, accuracy = [], 0.0
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        for number in range(1, rounds + 1):
            started = time.perf_counter()
            parts = [list(range(w, CLIENTS, CONCURRENCY)) for w in range(CONCURRENCY)]
            results = [r for f in [pool.submit(slot, w, p, number) for w, p in enumerate(parts)]
                       for r in f.result()]  # fmt: skip
            total = sum(n for _, n in results)
            global_state = {
                key: sum(state[key] * (n / total) for state, n in results) for key in global_state
            }
            accuracy = digits.accuracy(models[0], global_state)
            times.append(time.perf_counter() - started)
    return statistics.median(times[2:]), accuracy


def flower_round(python: str, rounds: int) -> tuple[float, float, list[float], float]:
    """(start to round 1, median steady round, every round gap, final accuracy) of Flower on
    the same task: ``bench/flower_round.py`` run by ``python`` (an interpreter with flwr)."""
    command = [python, str(ROOT / "bench" / "flower_round.py"), "--rounds", str(rounds)]
    done = subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    gaps = result["gaps"]
    return result["startup_s"], statistics.median(gaps[1:]), gaps, result["accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3, help="alternating platform/floor runs")
    parser.add_argument(
        "--flower-python",
        metavar="PYTHON",
        help="an interpreter with flwr 1.42 installed: Flower runs the same task in every repeat",
    )
    args = parser.parse_args()
    rows = []
    for repeat in range(args.repeats):
        startup, platform, gaps = platform_round(args.rounds)
        line = (
            f"run {repeat + 1}: platform {platform:.3f} s/round (start to round 1 open "
            f"{startup:.1f} s; gaps {_listed(gaps)})"
        )
        flower = float("nan")
        if args.flower_python:
            flower_start, flower, flower_gaps, flower_acc = flower_round(
                args.flower_python, args.rounds
            )
            line += (
                f", Flower {flower:.3f} s/round (start to round 1 {flower_start:.1f} s; gaps "
                f"{_listed(flower_gaps)}; final test accuracy {flower_acc:.3f})"
            )
        floor, accuracy = floor_round(args.rounds)
        rows.append((startup, platform, flower, floor))
        ratios = f"{platform / floor:.2f}x"
        if args.flower_python:
            ratios += f", Flower {flower / floor:.2f}x"
        print(
            f"{line}, floor {floor:.3f} s/round (final test accuracy {accuracy:.3f}), ratio "
            f"{ratios}",
            flush=True,
        )
    startup, platform, flower, floor = (statistics.median(c) for c in zip(*rows, strict=True))
    print(
        f"median of {len(rows)}: platform {platform:.3f} s/round, floor {floor:.3f} s/round, "
        f"ratio {platform / floor:.2f}x; start to round 1 open {startup:.1f} s"
        + (f"; Flower {flower:.3f} s/round, {flower / floor:.2f}x" if args.flower_python else "")
    )


def _listed(gaps: list[float]) -> str:
    return ", ".join(f"{g:.2f}" for g in gaps)


if __name__ == "__main__":
    main()
