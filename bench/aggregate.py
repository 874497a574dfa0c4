"""Aggregation throughput: seconds per round, GB/s folded, and the ratio to memory bandwidth.

Run: ``.venv/bin/python bench/aggregate.py`` (``--quick`` for small sizes). Each configuration
runs in a fresh subprocess so that its peak RSS (ru_maxrss) is its own: it should not grow with
K, because updates are wrapped on the fly around a fixed pool of pre-generated adapters (larger
than the L3 cache, so they are read from DRAM) and the accumulator is O(one adapter).

"numpy GB/s" is a plain ``ndarray.sum()`` read of the same number of bytes, from a buffer as
large as the pool, measured in the same process right after the aggregation: the machine's
practical read bandwidth. "ratio" = folded GB/s / numpy GB/s.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SYNTH = {f"base_model.model.layers.{i}.proj": (768, 768) for i in range(6)}
RANKS = (4, 8, 16, 32)


def minilm_modules() -> dict[str, tuple[int, int]]:
    """Module map of a real peft LoRA on a MiniLM-L12-sized BERT (random init, no download)."""
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from transformers import BertConfig, BertModel

    config = BertConfig(
        hidden_size=384, num_hidden_layers=12, num_attention_heads=12, intermediate_size=1536
    )
    model = get_peft_model(
        BertModel(config),
        LoraConfig(r=8, target_modules=["query", "key", "value", "dense"]),
    )
    mods: dict[str, tuple[int, int]] = {}
    for key, t in get_peft_model_state_dict(model).items():
        if key.endswith(".lora_A.weight"):
            mods.setdefault(key[: -len(".lora_A.weight")], (t.shape[1], 0))
        elif key.endswith(".lora_B.weight"):
            m = key[: -len(".lora_B.weight")]
            mods[m] = (mods[m][0], t.shape[0])
    return mods


def run_one(
    name: str, k: int, modules: dict[str, tuple[int, int]], pool_mb: int, check: bool
) -> dict:
    """Time one round of ``name`` over k clients (runs inside the child process)."""
    import torch

    from server.aggregation import ClientUpdate, get_strategy, lora_scale

    strategy = get_strategy(name, r_max=max(RANKS))
    rng = random.Random(0)
    gen = torch.Generator().manual_seed(0)
    pool: list[tuple[dict[str, torch.Tensor], int, int]] = []  # tensors, rank, bytes
    pool_bytes = 0
    while pool_bytes < pool_mb * 2**20:
        rank = rng.choice(RANKS)
        spec = strategy.upload_spec(modules, rank)
        tensors = {key: torch.randn(shape, generator=gen) * 0.01 for key, shape in spec.items()}
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        pool.append((tensors, rank, size))
        pool_bytes += size
    previous = strategy.initial_adapter(modules, rank=max(RANKS), seed=0)

    # Warm-up round: first calls into torch ops are slow; a worker process is long-lived.
    warm = strategy.accumulator(previous)
    for tensors, rank, _ in pool[-4:]:
        warm.add(ClientUpdate(tensors, 1, lora_scale(rank, 2.0 * rank), "warm"))
    warm.result()

    # Bytes are counted outside the timed loop: bookkeeping is not aggregation work.
    folded = sum(pool[i % len(pool)][2] for i in range(k))
    start = time.perf_counter()
    acc = strategy.accumulator(previous)
    for i in range(k):
        tensors, rank, _ = pool[i % len(pool)]
        update = ClientUpdate(tensors, 10 + i % 7, lora_scale(rank, 2.0 * rank), f"c{i}")
        acc.add(update, check_finite=check)
    acc.result()
    seconds = time.perf_counter() - start

    buf = np.ones(pool_bytes // 4, dtype=np.float32)
    buf.sum()  # warm the pages
    reps, rest = divmod(folded, buf.nbytes)
    t0 = time.perf_counter()
    for _ in range(reps):
        buf.sum()
    buf[: rest // 4].sum()
    read_s = time.perf_counter() - t0
    del buf
    return {
        "seconds": seconds,
        "gb": folded / 1e9,
        "gbps": folded / seconds / 1e9,
        "np_gbps": folded / read_s / 1e9,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "pool_mb": pool_bytes / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--one", nargs=5, metavar=("NAME", "K", "MODULES", "POOL_MB", "CHECK"))
    args = parser.parse_args()
    if args.one:
        name, k, mods, pool_mb, check = args.one
        print(json.dumps(run_one(name, int(k), json.loads(mods), int(pool_mb), check == "1")))
        return

    ks = (10, 100) if args.quick else (10, 100, 1000)
    pool_mb = 48 if args.quick else 256
    adapters = {"6x768x768": SYNTH}
    if not args.quick:
        adapters["MiniLM peft"] = minilm_modules()
    # (strategy, K, NaN/inf scan in add): unchecked = uploads already validated on arrival
    plan = [(n, k, c) for n in ("rbla", "fedsa") for c in (True, False) for k in ks]
    if not args.quick:
        plan += [("zeropad", 1000, True), ("hetlora", 100, True), ("hetlora", 1000, True),
                 ("flexlora", 10, True), ("flexlora", 100, True)]  # fmt: skip
    header = (
        f"{'strategy':<9} {'adapter':<12} {'scan':<4} {'K':>5} {'s/round':>9} {'GB folded':>10} "
        f"{'GB/s':>7} {'numpy GB/s':>10} {'ratio':>6} {'peak RSS MB':>11}"
    )
    print(header)
    print("-" * len(header))
    for adapter, modules in adapters.items():
        rows = plan if adapter == "6x768x768" else [p for p in plan if p[0] in ("rbla", "fedsa")]
        for name, k, check in rows:
            args_one = ["--one", name, str(k), json.dumps(modules), str(pool_mb), str(int(check))]
            out = subprocess.run(
                [sys.executable, __file__, *args_one], check=True, capture_output=True, text=True
            )
            r = json.loads(out.stdout)
            print(
                f"{name:<9} {adapter:<12} {'yes' if check else 'no':<4} {k:>5} "
                f"{r['seconds']:>9.4f} {r['gb']:>10.3f} "
                f"{r['gbps']:>7.2f} {r['np_gbps']:>10.2f} {r['gbps'] / r['np_gbps']:>6.2f} "
                f"{r['peak_rss_mb']:>11.0f}",
                flush=True,
            )
    print(f"\nupdates cycle through a fixed pool of ~{pool_mb} MB of pre-generated adapters.")


if __name__ == "__main__":
    main()
