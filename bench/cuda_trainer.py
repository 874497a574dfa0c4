"""The trainer on CUDA: fp32, bf16 autocast and gradient checkpointing, then speed and memory.

Usage: ``.venv/bin/python bench/cuda_trainer.py [--device cuda] [--hidden 1024 --layers 24
--seq-len 512 --batch-sizes 8 32] [--out bench/results/cuda-trainer.json]``; ``--device cpu
--quick`` runs every part at toy sizes on a CPU (a check of the script, in well under a minute).

1. **Correctness** (tests.hf_models' tiny Llama, LoRA r 4 on q/k/v/o, ``--rounds`` rounds, each
   from the last one's decoded update as ``incoming``, as the SDK does): max abs difference per
   tensor of the final update, device fp32 vs CPU, bf16 and fp16 autocast vs fp32, checkpointing
   on vs off; what ``precision="auto"`` resolves to; whether the upload is float32, contiguous and
   decodes; the train loss per round. Hooks on layer 0's MLP record its output dtype (autocast at
   work) and its entries in round 1 (two per batch where checkpointing recomputes it).
2. **Speed and memory** (a Llama from a config, ``--hidden`` x ``--layers``, vocab ``--vocab``,
   saved in fp32 and in bf16 and loaded by the trainer itself, in float32 either way
   (client_sdk.models.BASE_DTYPE); LoRA r 16 on q/k/v/o; random tokens in a TextDataset, the
   trainer's own batches): per saved dtype, precision and checkpointing, the median seconds per
   optimiser step after ``--warmup`` (synchronised in ``on_step``), tokens/s and peak allocated
   GPU memory (reset per configuration). Same data and seeds for each.

Writes the JSON result to ``--out`` and its tables (markdown) beside it, as ``.md``.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import get_peft_model_state_dict
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from client_sdk.device_data import read_training_data  # noqa: E402
from client_sdk.model_spec import ModelSpec, locate_model  # noqa: E402
from client_sdk.text_data import LocalDataset, TextDataset  # noqa: E402
from client_sdk.trainer import LoraTrainer  # noqa: E402
from client_sdk.trainer_settings import AdapterConfig, TrainSettings  # noqa: E402
from client_sdk.training_loop import autocast_dtype  # noqa: E402
from client_sdk.wire_format import decode_update  # noqa: E402
from tests.hf_models import tiny_llama, write_causal_lm_jsonl  # noqa: E402

ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
PARTS = {"lora_A", "lora_B"}
MiB = 2**20
Update = dict[str, torch.Tensor]
#: (run name, precision, gradient checkpointing); None: the trainer's default for the device.
CORRECTNESS: list[tuple[str, str, bool | None]] = [
    ("fp32", "fp32", False), ("fp32+ckpt", "fp32", True), ("bf16", "bf16", False),
    ("fp16", "fp16", False), ("auto", "auto", None),
]  # fmt: skip
#: (base dtype as saved, precision, gradient checkpointing).
SPEED = [(b, p, c) for b, p in (("fp32", "fp32"), ("fp32", "bf16"), ("bf16", "auto"))
         for c in (False, True)]  # fmt: skip


class Probe:
    """Hooks on a module: how often it was entered, and the dtypes it returned. Entries, since
    a checkpointed recomputation stops early, inside the MLP, once it has its saved tensors."""

    def __init__(self, module: nn.Module) -> None:
        self.calls, self.dtypes = 0, set[str]()
        self._hooks = [
            module.register_forward_pre_hook(lambda *_: setattr(self, "calls", self.calls + 1)),
            module.register_forward_hook(lambda m, a, out: self.dtypes.add(str(out.dtype)[6:])),
        ]

    def close(self) -> dict[str, Any]:
        for hook in self._hooks:
            hook.remove()
        return {"mlp_calls": self.calls, "mlp_dtypes": sorted(self.dtypes)}


def local_rounds(spec: ModelSpec, data: LocalDataset, device: str, rounds: int, **kw: Any) -> dict:
    """``rounds`` rounds of one trainer, each starting from the last round's decoded update."""
    trainer = LoraTrainer(spec, device=device, **kw)
    adapter = AdapterConfig(4, lora_alpha=8.0)
    settings = TrainSettings(epochs=1, lr=5e-3, batch_size=8, optimizer="adamw", seed=3)
    state = get_peft_model_state_dict(trainer.load_model(adapter, incoming={}))
    initial = {k: v.detach().cpu().clone() for k, v in state.items()}
    probe = Probe(trainer.base_model().model.layers[0].mlp)  # type: ignore[union-attr,index]
    out: dict[str, Any] = {"precision": trainer.precision, "ckpt": trainer.gradient_checkpointing}
    out["autocast"] = str(autocast_dtype(trainer.device, trainer.precision))
    incoming: Update = {}
    losses = []
    for n in range(rounds):
        result = trainer.train(
            adapter, incoming=incoming, shared_parts=PARTS, train_data=data, settings=settings
        )
        if n == 0:
            out.update(probe.close(), upload=check_upload(result.update, initial))
        incoming, _ = decode_update(result.update)
        losses.append(result.metrics["train_loss"])
    return {**out, "losses": losses, "update": incoming, "initial": initial}


def check_upload(raw: bytes, initial: Update) -> dict[str, Any]:
    """What the upload holds: its header's dtypes, and whether every tensor decodes float32,
    contiguous and finite with peft's shape."""
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    tensors, meta = decode_update(raw)
    return {
        "header_dtypes": sorted({v["dtype"] for k, v in header.items() if k != "__metadata__"}),
        "decoded_ok": all(
            t.dtype == torch.float32 and t.is_contiguous() and bool(t.isfinite().all())
            and t.shape == initial[k].shape for k, t in tensors.items()
        ),
        "keys": len(tensors), "metadata": {k: meta[k] for k in ("rank", "parts", "n_samples")},
    }  # fmt: skip


def max_diff(a: Update, b: Update) -> dict[str, float]:
    return {k: float((a[k].float() - b[k].float()).abs().max()) for k in sorted(a)}


def correctness(device: str, rounds: int, root: Path) -> dict[str, Any]:
    model_dir = tiny_llama(root / "tiny")
    spec = ModelSpec(source=str(model_dir), task_type="CAUSAL_LM", target_modules=ATTENTION)
    data_file = write_causal_lm_jsonl(root / "tiny.jsonl", n=64)
    data, _ = read_training_data(data_file, None, spec).datasets(
        locate_model(str(model_dir)), val_fraction=0
    )
    runs = {"cpu": local_rounds(spec, data, "cpu", rounds)}
    for name, precision, ckpt in CORRECTNESS:
        kw = {} if ckpt is None else {"gradient_checkpointing": ckpt}
        runs[name] = local_rounds(spec, data, device, rounds, precision=precision, **kw)
        print(f"  {device} {name}: losses {runs[name]['losses']}", flush=True)
    ref = runs["fp32"]["update"]
    pairs = {
        "initial, device vs cpu": max_diff(runs["fp32"]["initial"], runs["cpu"]["initial"]),
        "fp32 device vs cpu": max_diff(ref, runs["cpu"]["update"]),
        "fp32 ckpt on vs off": max_diff(runs["fp32+ckpt"]["update"], ref),
        "bf16 vs fp32": max_diff(runs["bf16"]["update"], ref),
        "fp16 vs fp32": max_diff(runs["fp16"]["update"], ref),
        "auto vs bf16": max_diff(runs["auto"]["update"], runs["bf16"]["update"]),
        "max abs fp32": {k: float(v.abs().max()) for k, v in sorted(ref.items())},
    }
    for run in runs.values():
        del run["update"], run["initial"]
    return {"runs": runs, "max_abs_diff": pairs}


def big_llama(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    """A Llama from a config, seeded weights drawn on the device, saved in fp32 and in bf16."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.hidden * 11 // 4,
        num_hidden_layers=args.layers, num_attention_heads=max(args.hidden // 64, 1),
        max_position_embeddings=max(args.seq_len, 128), pad_token_id=0, bos_token_id=1,
        eos_token_id=2,
    )  # fmt: skip
    torch.manual_seed(0)
    with torch.device(args.device):
        model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(root / "fp32")
    model.to(torch.bfloat16).save_pretrained(root / "bf16")
    n = sum(p.numel() for p in model.parameters())
    del model
    disk = {d: sum(f.stat().st_size for f in (root / d).iterdir()) / MiB for d in ("fp32", "bf16")}
    print(f"  {n / 1e6:.0f} M parameters, saved: {disk} MiB", flush=True)
    return {"params": n, "intermediate": config.intermediate_size, "disk_mib": disk}


def speed_one(model_dir: Path, data: TextDataset, args: argparse.Namespace, batch_size: int,
              precision: str, ckpt: bool) -> dict[str, Any]:  # fmt: skip
    """One configuration: a new trainer loads the model, builds its adapter, trains one round."""
    device, cuda = torch.device(args.device), args.device.startswith("cuda")
    spec = ModelSpec(source=str(model_dir), task_type="CAUSAL_LM", target_modules=ATTENTION)
    trainer = LoraTrainer(spec, device=device, precision=precision, gradient_checkpointing=ckpt)
    adapter = AdapterConfig(16, lora_alpha=32.0)
    trainer.load_model(adapter, incoming={})
    base = trainer.base_model()
    probe = Probe(base.model.layers[0].mlp)  # type: ignore[union-attr,index]
    loaded = torch.cuda.memory_allocated(device) / MiB if cuda else None
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    stamps: list[float] = []

    def on_step(done: int, total: int) -> None:
        if cuda:
            torch.cuda.synchronize(device)
        stamps.append(time.perf_counter())

    settings = TrainSettings(max_steps=args.warmup + args.steps, lr=1e-4, batch_size=batch_size,
                             optimizer="adamw", seed=0)  # fmt: skip
    on_step(0, 0)
    result = trainer.train(adapter, incoming={}, shared_parts=PARTS, train_data=data,
                           settings=settings, on_step=on_step)  # fmt: skip
    step_s = statistics.median(np.diff(stamps)[args.warmup :].tolist())
    out = {
        "base_dtype": str(next(base.parameters()).dtype)[6:], "precision": precision,
        "ckpt": ckpt, "batch_size": batch_size, "step_s": step_s,
        "tokens_per_s": batch_size * args.seq_len / step_s, "weights_mib": loaded,
        "peak_mib": torch.cuda.max_memory_allocated(device) / MiB if cuda else None,
        "train_loss": result.metrics["train_loss"], **probe.close(),
    }  # fmt: skip
    del trainer, base, result
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return out


def speed(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    model = big_llama(root, args)
    configs = []
    for batch_size in args.batch_sizes:
        n = batch_size * (args.warmup + args.steps)  # one pass: every step a full batch
        rows = np.random.default_rng(0).integers(3, args.vocab, size=(n, args.seq_len)).tolist()
        data = TextDataset(rows, [list(r) for r in rows], pad_id=0)  # every token a label
        for base_dtype, precision, ckpt in SPEED:
            configs.append(speed_one(root / base_dtype, data, args, batch_size, precision, ckpt))
            print(f"  {json.dumps(configs[-1])}", flush=True)
    return {**model, "configs": configs}


def table(head: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    return lines + ["| " + " | ".join(map(str, row)) + " |" for row in rows] + [""]


def markdown(result: dict[str, Any]) -> str:
    corr, lines = result["correctness"], [f"`{json.dumps(result['env'])}`", ""]
    pairs = corr["max_abs_diff"]
    rows = [[k[23:]] + [f"{pairs[p][k]:.2e}" for p in pairs] for k in pairs["max abs fp32"]]
    lines += table(["tensor", *pairs], rows)
    rows = [[name, r["precision"], r["ckpt"], r["autocast"], ",".join(r["mlp_dtypes"]),
             r["mlp_calls"], ", ".join(f"{v:.4f}" for v in r["losses"])]
            for name, r in corr["runs"].items()]  # fmt: skip
    head = ["run", "precision", "ckpt", "autocast", "mlp dtype", "mlp calls r1", "losses"]
    lines += table(head, rows) + [f"upload: `{json.dumps(corr['runs']['auto']['upload'])}`", ""]
    if (sp := result.get("speed")) is not None:
        lines += [f"{sp['params'] / 1e6:.0f} M parameters, on disk (MiB): {sp['disk_mib']}", ""]
        rows = [[c["base_dtype"], c["precision"], c["ckpt"], c["batch_size"],
                 f"{c['step_s']:.4f}", f"{c['tokens_per_s']:.0f}",
                 *("n/a" if c[k] is None else f"{c[k]:.0f}" for k in ("weights_mib", "peak_mib")),
                 f"{c['mlp_calls']} {','.join(c['mlp_dtypes'])}", f"{c['train_loss']:.4f}"]
                for c in sp["configs"]]  # fmt: skip
        head = ["base", "precision", "ckpt", "batch", "s/step", "tokens/s", "weights MiB",
                "peak MiB", "mlp calls, dtype", "loss"]  # fmt: skip
        lines += table(head, rows)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="toy sizes (a check of the script)")
    parser.add_argument("--skip-speed", action="store_true", help="the correctness part only")
    sizes = {"--rounds": 3, "--hidden": 1024, "--layers": 24, "--vocab": 32000, "--seq-len": 512,
             "--warmup": 3, "--steps": 10}  # fmt: skip
    for flag, default in sizes.items():
        parser.add_argument(flag, type=int, default=default)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8])
    parser.add_argument("--out", type=Path, default=Path("bench/results/cuda-trainer.json"))
    args = parser.parse_args()
    if args.quick:
        args.hidden, args.layers, args.vocab, args.seq_len = 64, 2, 1000, 32
        args.batch_sizes, args.warmup, args.steps = [4], 1, 3
    import peft
    import transformers

    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "transformers": transformers.__version__, "peft": peft.__version__,
                           "fp32_matmul": torch.get_float32_matmul_precision()}  # fmt: skip
    if args.device.startswith("cuda"):
        env |= {"gpu": torch.cuda.get_device_name(), "cuda": torch.version.cuda,
                "bf16_supported": torch.cuda.is_bf16_supported()}  # fmt: skip
    print(json.dumps(env), flush=True)
    result: dict[str, Any] = {"env": env, "args": {**vars(args), "out": str(args.out)}}
    with tempfile.TemporaryDirectory(prefix="flaas-bench-cuda-") as scratch:
        print("correctness (tiny Llama):", flush=True)
        result["correctness"] = correctness(args.device, args.rounds, Path(scratch))
        if not args.skip_speed:
            print("speed:", flush=True)
            result["speed"] = speed(args, Path(scratch))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(text := markdown(result))
    print(text)


if __name__ == "__main__":
    main()
