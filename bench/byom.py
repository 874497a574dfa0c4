"""Bring-your-own-model costs: a causal-LM job end to end, and one client's round.

Usage: ``.venv/bin/python bench/byom.py [--clients 4] [--rounds 5] [--hidden 64]``

1. **Causal-LM job.** A Llama built from a small config (``--hidden``, 2 layers) and saved with
   ``save_pretrained`` is "the user's model". A local coordinator runs a job on it; each of
   ``--clients`` devices is a real ``flaas client join --model DIR --data FILE`` process.
   Reported per round: the wall time (round opened to closed), the slowest client's training
   time (its ``train_seconds``: the round cannot close before it) and the rest (downloads,
   uploads, polling, aggregation). Peak RSS is the largest client process's.
2. **A digits client's round, reload vs rebuild.** The same rounds of local training on one
   digits shard with the peft model built once and its adapter reloaded (what the trainer
   does), and with a new trainer, so a new peft model, every round (what it did before).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from server.local_coordinator import LocalCoordinator  # noqa: E402
from tests.hf_models import tiny_llama, write_causal_lm_jsonl  # noqa: E402


def causal_lm_job(clients: int, rounds: int, hidden: int, workdir: Path) -> dict[str, Any]:
    model_dir = _llama(workdir / "model", hidden)
    files = [
        write_causal_lm_jsonl(workdir / f"data-{i}.jsonl", n=150 + 50 * i, seed=i)
        for i in range(clients)
    ]
    spec = {
        "name": "bench-byom",
        "model": {"source": str(model_dir), "task_type": "CAUSAL_LM"},
        "rank": {"policy": "autorank", "r_min": 4, "r_max": 16},
        "lora": {"lora_alpha": 32.0},
        "rounds": rounds,
        "enrolment": {"min_clients": clients, "target_clients": clients, "timeout_s": 600},
        "training": {"epochs": 1, "lr": 3e-3, "batch_size": 8, "optimizer": "adamw"},
        "seed": 1,
    }
    with LocalCoordinator(workdir / "coordinator") as coordinator:
        with coordinator.operator() as http:
            job = http.post("/api/v1/jobs", json=spec).raise_for_status().json()
        started = time.monotonic()
        processes = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "server.cli",
                    "client",
                    "join",
                    "--server",
                    coordinator.url,
                    "--job",
                    job["id"],
                    "--token",
                    job["join_token"],
                    "--model",
                    str(model_dir),
                    "--data",
                    str(files[i]),
                    "--max-seq-len",
                    "64",
                    "--quiet",
                    "--device",
                    "cpu",
                    "--state-dir",
                    str(workdir / f"device-{i}"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
            )  # fmt: skip
            for i in range(clients)
        ]
        for process in processes:
            _, err = process.communicate(timeout=1800)
            if process.returncode != 0:
                raise SystemExit(f"a client failed:\n{err.decode()[-2000:]}")
        wall = time.monotonic() - started
        peak_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        with coordinator.operator() as http:
            per_round = [
                http.get(f"/api/v1/jobs/{job['id']}/rounds/{n}").json()
                for n in range(1, rounds + 1)
            ]
    rows = []
    for detail in per_round:
        opened = datetime.fromisoformat(detail["opened_at"])
        closed = datetime.fromisoformat(detail["closed_at"])
        accepted = [u for u in detail["updates"] if u["status"] == "accepted"]
        training = max(u["metrics"]["train_seconds"] for u in accepted)
        loss = statistics.fmean(u["metrics"]["train_loss"] for u in accepted)
        rows.append(((closed - opened).total_seconds(), training, loss))
    return {"rows": rows, "wall": wall, "peak_rss_mb": peak_rss_mb}


def _llama(path: Path, hidden: int) -> Path:
    """tests.hf_models' tiny Llama, widened to ``hidden``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    tiny_llama(path)
    config = AutoConfig.from_pretrained(path)
    config.hidden_size, config.intermediate_size = hidden, 2 * hidden
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    return path


def client_rounds(rounds: int) -> dict[str, float]:
    """Median seconds per local round: one peft model reloaded vs a new one each round."""
    import torch

    from client_sdk.simulate import make_shards
    from client_sdk.tasks import get_task
    from client_sdk.trainer import LoraTrainer
    from client_sdk.trainer_settings import AdapterConfig, TrainSettings

    torch.set_num_threads(1)
    task = get_task("digits")
    data = task.load(seed=0)
    shard = make_shards(data.y_train, data.x_train, 10, 0.5, seed=0)[0]
    train = task.dataset(shard.x_train, shard.y_train)
    val = task.dataset(shard.x_val, shard.y_val)
    settings = TrainSettings(**task.default_settings)
    adapter = AdapterConfig(8, lora_alpha=16.0)
    parts = {"lora_A", "lora_B", "extra"}

    def one(trainer: LoraTrainer, incoming: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        started = time.perf_counter()
        result = trainer.train(
            adapter, incoming=incoming, shared_parts=parts, train_data=train, val_data=val,
            settings=settings,
        )  # fmt: skip
        from client_sdk.wire_format import decode_update

        return time.perf_counter() - started, decode_update(result.update)[0]

    reused = LoraTrainer(task.model_spec())
    times: dict[str, list[float]] = {"reload": [], "rebuild": []}
    incoming: dict[str, Any] = {}
    for _ in range(rounds):
        seconds, incoming = one(reused, incoming)
        times["reload"].append(seconds)
        seconds, _ = one(LoraTrainer(task.model_spec()), incoming)
        times["rebuild"].append(seconds)
    return {name: statistics.median(values[1:]) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--client-rounds", type=int, default=21)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="flaas-bench-byom-") as scratch:
        job = causal_lm_job(args.clients, args.rounds, args.hidden, Path(scratch))
    print(f"causal-LM job: tiny Llama (hidden {args.hidden}, 2 layers, all-linear LoRA, "
          f"r in [4, 16]), {args.clients} client processes, {args.rounds} rounds")  # fmt: skip
    print(f"{'round':>5} {'wall s':>7} {'training s':>10} {'other s':>8} {'train loss':>10}")
    for n, (wall, training, loss) in enumerate(job["rows"], 1):
        print(f"{n:5d} {wall:7.2f} {training:10.2f} {wall - training:8.2f} {loss:10.3f}")
    walls = [w for w, _, _ in job["rows"][1:]] or [job["rows"][0][0]]
    trains = [t for _, t, _ in job["rows"][1:]] or [job["rows"][0][1]]
    print(
        f"median (rounds 2+): {statistics.median(walls):.2f} s per round, "
        f"{statistics.median(trains):.2f} s training, "
        f"{statistics.median(walls) - statistics.median(trains):.2f} s everything else; "
        f"job wall {job['wall']:.1f} s; peak client RSS {job['peak_rss_mb']:.0f} MB"
    )
    times = client_rounds(args.client_rounds)
    print(
        f"digits client round (median of {args.client_rounds - 1}): reload "
        f"{times['reload'] * 1000:.1f} ms, rebuild {times['rebuild'] * 1000:.1f} ms "
        f"(reload / rebuild = {times['reload'] / times['rebuild']:.2f})"
    )


if __name__ == "__main__":
    main()
