"""Aggregation throughput: seconds per round, GB/s folded, and the ratio to memory bandwidth.

Run: ``.venv/bin/python bench/aggregate.py`` (``--quick`` for small sizes). Each configuration
runs in a fresh subprocess so that its peak RSS (ru_maxrss) is its own: it should not grow with
K, because updates are wrapped on the fly around a fixed pool of pre-generated adapters (larger
than the L3 cache, so they are read from DRAM) and the accumulator is O(one adapter).

Each configuration process sets up its allocator as ``flaas worker`` does
(``server.memory.retain_freed_memory``; ``--glibc-defaults`` to compare without).

"numpy GB/s" is a plain ``ndarray.sum()`` read of the same number of bytes, from a buffer as
large as the pool, measured in the same process right after the aggregation: the machine's
practical read bandwidth for one core. "ratio" = folded GB/s / numpy GB/s. Where numpy's sum
is bound by the core rather than by memory (some VMs), it understates the bandwidth; "all-core
GB/s" (a ``torch.sum`` of the same bytes on every thread the fold may use) and "vs all-core"
show the fold against what the machine can read at most.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SYNTH = {f"base_model.model.layers.{i}.proj": (768, 768) for i in range(6)}
RANKS = (4, 8, 16, 32)
FOLDED_PER_CONFIG = 2000  # updates folded in timed rounds per configuration (5 rounds at least)


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
    name: str, k: int, modules: dict[str, tuple[int, int]], pool_mb: int, check: bool, retain: bool
) -> dict:
    """Time rounds of ``name`` over k clients (runs inside the child process)."""
    import torch

    from server.memory import retain_freed_memory

    if retain:
        retain_freed_memory()  # as `flaas worker` does at start

    from server.aggregation import ClientUpdate, get_strategy, lora_scale
    from server.tensors import load_adapter, save_adapter

    strategy = get_strategy(name, r_max=max(RANKS))
    rng = random.Random(0)
    gen = torch.Generator().manual_seed(0)
    pool: list[tuple[dict[str, torch.Tensor], int, int]] = []  # tensors, rank, bytes
    pool_bytes = 0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "update.safetensors"
        while pool_bytes < pool_mb * 2**20:
            rank = rng.choice(RANKS)
            spec = strategy.upload_spec(modules, rank)
            upload = {key: torch.randn(shape, generator=gen) * 0.01 for key, shape in spec.items()}
            # Read back as a worker reads a stored update (one buffer, tensors as views).
            path.write_bytes(save_adapter(upload))
            tensors = load_adapter(path)
            size = sum(t.numel() * t.element_size() for t in tensors.values())
            pool.append((tensors, rank, size))
            pool_bytes += size
    previous = strategy.initial_adapter(modules, rank=max(RANKS), seed=0)
    scales = {rank: lora_scale(rank, 2.0 * rank) for rank in RANKS}  # once per job, as a worker

    def one_round(first: int) -> float:
        acc = strategy.accumulator(previous)
        for i in range(first, first + k):
            tensors, rank, _ = pool[i % len(pool)]
            acc.add(ClientUpdate(tensors, 10 + i % 7, scales[rank], f"c{i}"), check_finite=check)
        acc.result()
        return time.perf_counter()

    # Round 0 warms up (first calls into torch ops are slow; a worker process is long-lived);
    # each round folds the next K updates of the pool, and medians over the timed rounds are
    # reported (a 100-client round takes milliseconds). Bytes are counted outside the timings.
    seconds, folded = [], []
    for r in range(max(5, FOLDED_PER_CONFIG // k) + 1):
        start = time.perf_counter()
        seconds.append(one_round(r * k) - start)
        folded.append(sum(pool[i % len(pool)][2] for i in range(r * k, (r + 1) * k)))

    buf = np.ones(pool_bytes // 4, dtype=np.float32)
    buf.sum()  # warm the pages
    read_s = read_seconds(buf, folded)
    all_core_s = read_seconds(torch.from_numpy(buf), folded)
    del buf
    # (bytes, fold seconds, numpy read seconds, all-core read seconds) of the timed rounds
    timed = list(zip(folded, seconds, read_s, all_core_s, strict=True))[1:]
    return {
        "seconds": statistics.median(t[1] for t in timed),
        "gb": statistics.median(t[0] for t in timed) / 1e9,
        "gbps": statistics.median(b / t / 1e9 for b, t, _, _ in timed),
        "np_gbps": statistics.median(b / r / 1e9 for b, _, r, _ in timed),
        "ratio": statistics.median(r / t for _, t, r, _ in timed),
        "all_core_gbps": statistics.median(b / a / 1e9 for b, _, _, a in timed),
        "all_core_ratio": statistics.median(a / t for _, t, _, a in timed),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "pool_mb": pool_bytes / 2**20,
    }


def read_seconds(buf: np.ndarray | torch.Tensor, sizes: list[int]) -> list[float]:
    """Seconds to sum each of ``sizes`` bytes of ``buf`` (float32, larger than the L3 cache),
    each read starting where the previous one stopped, so that it comes from DRAM, as the
    pool's updates do."""
    seconds, start, end = [], 0, buf.shape[0]
    for size in sizes:
        left = size // 4
        t0 = time.perf_counter()
        while left:
            stop = min(start + left, end)
            buf[start:stop].sum()
            left -= stop - start
            start = stop % end
        seconds.append(time.perf_counter() - t0)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument(
        "--glibc-defaults",
        action="store_true",
        help="keep glibc's allocator defaults instead of the worker's (server/memory.py)",
    )
    parser.add_argument(
        "--one", nargs=6, metavar=("NAME", "K", "MODULES", "POOL_MB", "CHECK", "RETAIN")
    )
    args = parser.parse_args()
    if args.one:
        name, k, mods, pool_mb, check, retain = args.one
        result = run_one(name, int(k), json.loads(mods), int(pool_mb), check == "1", retain == "1")
        print(json.dumps(result))
        return

    ks = (10, 100) if args.quick else (10, 100, 1000)
    pool_mb = 48 if args.quick else 256
    adapters = {"6x768x768": SYNTH}
    if not args.quick:
        adapters["MiniLM peft"] = minilm_modules()
    # (strategy, K, NaN/inf scan in add): unchecked = uploads already validated on arrival
    plan = [(n, k, c) for n in ("rbla", "fedsa") for c in (True, False) for k in ks]
    if not args.quick:
        plan += [("rbla-shrink", 10, True), ("rbla-shrink", 100, True),
                 ("rbla-shrink", 1000, True),
                 ("zeropad", 1000, True), ("hetlora", 100, True), ("hetlora", 1000, True),
                 ("flexlora", 10, True), ("flexlora", 100, True)]  # fmt: skip
    header = (
        f"{'strategy':<9} {'adapter':<12} {'scan':<4} {'K':>5} {'s/round':>9} {'GB folded':>10} "
        f"{'GB/s':>7} {'numpy GB/s':>10} {'ratio':>6} {'all-core GB/s':>13} {'vs all-core':>11} "
        f"{'peak RSS MB':>11}"
    )
    print(header)
    print("-" * len(header))
    for adapter, modules in adapters.items():
        rows = plan if adapter == "6x768x768" else [p for p in plan if p[0] in ("rbla", "fedsa")]
        for name, k, check in rows:
            retain = str(int(not args.glibc_defaults))
            args_one = ["--one", name, str(k), json.dumps(modules), str(pool_mb), str(int(check))]
            args_one.append(retain)
            out = subprocess.run(
                [sys.executable, __file__, *args_one], check=True, capture_output=True, text=True
            )
            r = json.loads(out.stdout)
            print(
                f"{name:<9} {adapter:<12} {'yes' if check else 'no':<4} {k:>5} "
                f"{r['seconds']:>9.4f} {r['gb']:>10.3f} "
                f"{r['gbps']:>7.2f} {r['np_gbps']:>10.2f} {r['ratio']:>6.2f} "
                f"{r['all_core_gbps']:>13.2f} {r['all_core_ratio']:>11.2f} "
                f"{r['peak_rss_mb']:>11.0f}",
                flush=True,
            )
    print(f"\nupdates cycle through a fixed pool of ~{pool_mb} MB of pre-generated adapters;")
    print(
        "allocator: glibc defaults"
        if args.glibc_defaults
        else "allocator: a worker's (server.memory.retain_freed_memory)"
    )


if __name__ == "__main__":
    main()
