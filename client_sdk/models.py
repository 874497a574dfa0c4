"""Building a job's model: the base (real weights or a weightless skeleton), its peft config, and
the adapter layout peft gives it. The coordinator and every device use these same functions, so
the shapes a job expects are, by construction, the ones peft produces on the device.

Needs torch, transformers and peft (imported here, not by :mod:`client_sdk.model_spec`).
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from peft import LoraConfig, PeftModel, VeraConfig, get_peft_model, get_peft_model_state_dict
from peft.utils import ModulesToSaveWrapper
from torch import nn

from client_sdk.adapter_parts import AdapterLayout, module_of, part_of
from client_sdk.model_spec import (
    ALL_LINEAR,
    BUILTIN_INIT_SEED,
    ModelLocation,
    ModelSpec,
    locate_model,
)
from client_sdk.tasks.base import MLP, seeded_init
from client_sdk.trainer_settings import AdapterConfig

#: Held while a model is built or wrapped. transformers builds a model through process-wide
#: state (an empty-weights init that patches how modules register parameters), so two threads
#: loading at once (simulated clients, a coordinator's requests) can leave each other's
#: parameters on the meta device. Also held while torch's process-wide RNG is seeded (initial
#: values, a training that draws dropout masks: ``LoraTrainer._seeded``).
BUILD_LOCK = threading.RLock()

#: The dtype a Hugging Face base's weights load in, whatever dtype its checkpoint was saved in
#: (transformers 5 defaults to ``dtype="auto"``, the checkpoint's own; 4.x loaded float32). No
#: precision changes it: the CPU trains fp32, and CUDA's bf16 / fp16 are autocast over float32
#: parameters (client_sdk.training_loop), with a loss scaler that refuses fp16 gradients. A
#: half-precision base would make a classifier's trained head copy (``modules_to_save``) half
#: precision too, trained without float32 master weights, and round the global head loaded into
#: it every round. The cost: a bf16 / fp16 checkpoint takes twice its size in memory, and
#: autocast casts the frozen weights to bf16 / fp16 in every forward.
BASE_DTYPE = torch.float32


class ModelSpecError(ValueError):
    """The model exists but the spec cannot adapt it (a target matching nothing, ...)."""


def build_base(
    spec: ModelSpec,
    location: ModelLocation | None = None,
    *,
    weights: bool = True,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """The frozen base model of ``spec``, in eval mode.

    ``weights=False`` builds a skeleton on the meta device (no memory, no weights read): enough
    to know every module's shape. Hugging Face models load with their Auto class for the task
    type, from the local directory or the local cache only, their weights in :data:`BASE_DTYPE`.
    """
    location = location or locate_model(spec.source, spec.revision)
    with BUILD_LOCK:
        return _build(spec, location, weights, device)


def _build(
    spec: ModelSpec, location: ModelLocation, weights: bool, device: str | torch.device
) -> nn.Module:
    if location.builtin is not None:
        cfg = location.config
        with torch.device("meta") if not weights else contextlib.nullcontext():
            mlp = seeded_init(
                lambda: MLP(cfg["d_in"], cfg["hidden"], cfg["num_labels"]), BUILTIN_INIT_SEED
            )
        if not weights:
            return mlp.eval()
        if "pretrain" in cfg:  # pretrained on the public split, read from the cache
            from client_sdk.bases import pretrained_base

            mlp.load_state_dict(pretrained_base(cfg).state)
        return mlp.to(device).eval()
    import transformers

    auto = (
        transformers.AutoModelForCausalLM
        if spec.task_type == "CAUSAL_LM"
        else transformers.AutoModelForSequenceClassification
    )
    kwargs: dict[str, Any] = {"num_labels": spec.num_labels} if spec.task_type == "SEQ_CLS" else {}
    source = str(location.path)
    with _quiet_transformers():
        if not weights:
            config = transformers.AutoConfig.from_pretrained(
                source, local_files_only=True, **kwargs
            )
            with torch.device("meta"):
                # transformers leaves from_config unannotated.
                skeleton: nn.Module = auto.from_config(config)  # type: ignore[no-untyped-call]
            return skeleton.eval()
        model: nn.Module = auto.from_pretrained(
            source, local_files_only=True, dtype=BASE_DTYPE, **kwargs
        )
    return model.to(device).eval()


def peft_config(
    spec: ModelSpec, adapter: AdapterConfig, *, vera_prng_key: int = 0
) -> LoraConfig | VeraConfig:
    """peft's config for ``spec`` at the adapter's rank, alpha and kind.

    Built-in models get no peft task type (their forward takes ``inputs``, not token ids);
    Hugging Face models get theirs, so peft adds a SEQ_CLS head to ``modules_to_save`` and an
    exported adapter loads with the same class it was trained with.
    """
    task_type = None if spec.is_builtin else spec.task_type
    save = list(spec.modules_to_save) or None
    if adapter.adapter_type == "lora":
        return LoraConfig(
            r=adapter.rank,
            # peft annotates int, but the scale is alpha / r in float: float alphas are fine.
            lora_alpha=adapter.lora_alpha,  # type: ignore[arg-type]
            use_rslora=adapter.use_rslora,
            lora_dropout=spec.lora_dropout,
            target_modules=spec.target_modules,
            modules_to_save=save,
            task_type=task_type,
        )
    # VeRA has no alpha or rsLoRA scaling; its lambdas carry the scale. Its frozen
    # projections are regenerated from the fixed key on every party (save_projection=False).
    with quiet_vera():
        return VeraConfig(
            r=adapter.rank,
            target_modules=spec.target_modules,
            modules_to_save=save,
            vera_dropout=spec.lora_dropout,
            projection_prng_key=vera_prng_key,
            save_projection=False,
            task_type=task_type,
        )


def wrap(base: nn.Module, spec: ModelSpec, adapter: AdapterConfig) -> PeftModel:
    """``get_peft_model`` with a target that matches nothing reported by name."""
    config = peft_config(spec, adapter)
    _check_targets(base, spec)
    with BUILD_LOCK, quiet_vera():
        model = get_peft_model(base, config)
    assert isinstance(model, PeftModel)
    return model


def derive_layout(spec: ModelSpec, location: ModelLocation | None = None) -> AdapterLayout:
    """Every adapted module's ``(in, out)`` and every saved module's tensor shapes, read off a
    peft model built on a weightless skeleton of ``spec``'s model."""
    location = location or locate_model(spec.source, spec.revision)
    with BUILD_LOCK:
        base = build_base(spec, location, weights=False)
        with torch.device("meta"):
            state = get_peft_model_state_dict(wrap(base, spec, AdapterConfig(1, lora_alpha=1.0)))
    return layout_of(state)


def unwrap(model: PeftModel) -> nn.Module:
    """The base model with its original modules back: peft's ``unload`` removes the LoRA
    layers but keeps a ``modules_to_save`` module's trained copy, which would change the base."""
    prefix = "base_model.model."
    originals = {
        name.removeprefix(prefix): module.original_module
        for name, module in model.named_modules()
        if isinstance(module, ModulesToSaveWrapper)
    }
    with quiet_vera():
        base: nn.Module = model.unload()
    for name, module in originals.items():
        base.set_submodule(name, module)
    return base


def enable_checkpointing(base: nn.Module) -> None:
    """Activation checkpointing of a transformers model, under its current or former name."""
    kwargs = {"use_reentrant": False}  # non-re-entrant: works with frozen (grad-free) inputs
    if callable(enable := getattr(base, "activation_checkpointing_enable", None)):
        enable(activation_checkpointing_kwargs=kwargs)
    elif callable(enable := getattr(base, "gradient_checkpointing_enable", None)):
        enable(gradient_checkpointing_kwargs=kwargs)


def layout_of(state: dict[str, torch.Tensor]) -> AdapterLayout:
    """The rank-independent layout of a rank-r LoRA state dict (as get_peft_model_state_dict)."""
    modules: dict[str, tuple[int, int]] = {}
    extra: dict[str, tuple[int, ...]] = {}
    for key, tensor in state.items():
        part = part_of(key)
        if part == "lora_A":
            module = module_of(key)
            assert module is not None
            d_out = state[f"{module}.lora_B.weight"].shape[0]
            modules[module] = (int(tensor.shape[1]), int(d_out))
        elif part == "extra":
            extra[key] = tuple(int(s) for s in tensor.shape)
    return AdapterLayout(modules=modules, extra=extra)


def _adaptable(base: nn.Module) -> list[str]:
    """Full names of the modules LoRA can adapt (linear layers, GPT-2's Conv1D)."""
    names = []
    for name, module in base.named_modules():
        if (
            isinstance(module, nn.Linear | nn.Embedding | nn.Conv1d | nn.Conv2d)
            or type(module).__name__ == "Conv1D"
        ):
            names.append(name)
    return names


def _check_targets(base: nn.Module, spec: ModelSpec) -> None:
    targets = spec.target_modules
    every = [name for name, _ in base.named_modules() if name]
    for name in spec.modules_to_save:
        if not any(n == name or n.endswith(f".{name}") for n in every):
            raise ModelSpecError(f"modules_to_save {name!r} matches no module of {spec.source}")
    if targets == ALL_LINEAR:
        return
    if isinstance(targets, str):
        unmatched = [] if any(re.fullmatch(targets, name) for name in every) else [targets]
    else:
        unmatched = [t for t in targets if not any(n == t or n.endswith(f".{t}") for n in every)]
    if unmatched:
        candidates = sorted({name.rsplit(".", 1)[-1] for name in _adaptable(base)})
        raise ModelSpecError(
            f"target_modules {', '.join(repr(t) for t in unmatched)} match no module of "
            f"{spec.source}; its adaptable modules are named: {', '.join(candidates[:40])}"
            + (" ..." if len(candidates) > 40 else "")
            + f' (or use "{ALL_LINEAR}")'
        )


@contextlib.contextmanager
def quiet_vera() -> Iterator[None]:
    """Silence peft's warning about save_projection=False, which is deliberate here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Specified to not (save|load) vera_A")
        yield


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    # A SEQ_CLS head is new by design: "Some weights ... newly initialized" is not news.
    import transformers

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity(logging.ERROR)
    try:
        yield
    finally:
        transformers.logging.set_verbosity(verbosity)
