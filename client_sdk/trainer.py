"""Local LoRA / rsLoRA / VeRA training on the device, for any model a job names.

One trainer for every model: a Hugging Face causal LM or sequence classifier (loaded with
transformers' Auto classes from a local directory or the local cache) or a built-in demo MLP.
The peft model is built once per process, at the rank the coordinator assigned, and every round
only reloads its adapter: what the coordinator sent (``incoming``), what this device kept from
earlier rounds (``private``), and peft's initial values for the rest. It is rebuilt only when the
adapter itself changes (another rank, alpha or kind). Persistence between runs is
:class:`client_sdk.state.DeviceState`'s job, not the trainer's.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from peft import PeftModel, get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn

from client_sdk.adapter_parts import AdapterLayout, check_parts, check_tensors, part_of
from client_sdk.model_spec import ModelLocation, ModelSpec, locate_model
from client_sdk.models import (
    BUILD_LOCK,
    build_base,
    derive_layout,
    enable_checkpointing,
    layout_of,
    quiet_vera,
    unwrap,
    wrap,
)
from client_sdk.text_data import LocalDataset
from client_sdk.trainer_settings import AdapterConfig, TrainSettings
from client_sdk.training_loop import Observation, fit, observe, resolve_device
from client_sdk.wire_format import encode_update

_ADAPTER_NAME = "default"
#: Seed of peft's initial values (and a new head's): the same on every device.
INIT_SEED = 0
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def _strip_adapter_name(param_name: str) -> str:
    """Parameter name -> state-dict key: ``fc1.lora_A.default.weight`` -> ``fc1.lora_A.weight``."""
    return param_name.replace(f".{_ADAPTER_NAME}.", ".").removesuffix(f".{_ADAPTER_NAME}")


@dataclass
class TrainResult:
    """What one local training round produced.

    ``update`` is safetensors bytes holding exactly the shared parts (float32, contiguous) with
    metadata ``rank``, ``lora_alpha``, ``use_rslora``, ``adapter_type``, ``n_samples`` and
    ``parts``. ``private`` holds the trainable, non-shared, non-frozen tensors to keep on the
    device (e.g. FedSA's B and head), on the CPU.
    """

    update: bytes
    private: dict[str, torch.Tensor]
    n_samples: int
    metrics: dict[str, float] = field(default_factory=dict)


class LoraTrainer:
    """Trains peft adapters of ``spec``'s frozen base model on local data.

    ``model`` optionally gives the base (an ``nn.Module``, or a zero-argument factory) instead of
    loading it from ``spec.source`` (or from ``location``, e.g. a device's own copy of the job's
    model). ``device="auto"`` picks CUDA when available. On CUDA, ``precision="auto"`` trains
    under bf16 autocast (fp16 with loss scaling where bf16 is missing) and
    ``gradient_checkpointing`` (default: on for Hugging Face models on CUDA) trades compute for
    activation memory; on the CPU both are off. Torch's thread count is left to the caller.
    """

    def __init__(
        self,
        spec: ModelSpec,
        *,
        model: nn.Module | Callable[[], nn.Module] | None = None,
        location: ModelLocation | None = None,
        device: str | torch.device = "auto",
        precision: str = "auto",
        gradient_checkpointing: bool | None = None,
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.spec = spec
        self.device = resolve_device(device)
        self.precision = precision if self.device.type == "cuda" else "fp32"
        self.gradient_checkpointing = (
            gradient_checkpointing
            if gradient_checkpointing is not None
            else self.device.type == "cuda" and not spec.is_builtin
        )
        self._model_arg = model
        self._location = location
        self._base: nn.Module | None = None
        self._peft: PeftModel | None = None
        self._adapter: AdapterConfig | None = None
        self._initial: dict[str, torch.Tensor] = {}
        self._trainable: list[tuple[nn.Parameter, str]] = []
        self.builds = 0  # how many peft models this trainer built (once, unless ranks change)

    # ------------------------------------------------------------------ model building

    @property
    def location(self) -> ModelLocation | None:
        """Where the model is read from (None when the base was handed in as a module)."""
        if self._location is None and self._model_arg is None:
            self._location = locate_model(self.spec.source, self.spec.revision)
        return self._location

    @property
    def model_sha256(self) -> str | None:
        """SHA-256 of the model's config (its identity; None for a base handed in as a module)."""
        location = self.location
        return None if location is None else location.config_sha256

    @property
    def num_labels(self) -> int | None:
        """Classes of a classifier (its head size), None for a causal LM."""
        if self.spec.task_type != "SEQ_CLS":
            return None
        location = self.location
        return self.spec.num_labels or (None if location is None else location.num_labels)

    def base_model(self) -> nn.Module:
        """The frozen base, loaded once (with a new head drawn from :data:`INIT_SEED`)."""
        if self._base is None:
            with self._seeded(INIT_SEED):
                if self._model_arg is None:
                    base = build_base(self.spec, self.location, device=self.device)
                elif isinstance(self._model_arg, nn.Module):
                    base = self._model_arg
                else:
                    base = self._model_arg()
            if not isinstance(base, nn.Module):
                raise TypeError(f"model factory returned {type(base).__name__}, not an nn.Module")
            base.requires_grad_(False)
            if self.gradient_checkpointing:
                enable_checkpointing(base)
            self._base = base.to(self.device).eval()
        return self._base

    def peft_model(self, adapter: AdapterConfig) -> PeftModel:
        """The peft model at ``adapter`` (built on the first call, rebuilt if it changed)."""
        if self._peft is not None and self._adapter == adapter:
            return self._peft
        if self._peft is not None:
            self._base = unwrap(self._peft)
            self._peft = None
        with self._seeded(INIT_SEED), quiet_vera():
            model = wrap(self.base_model(), self.spec, adapter)
        if self.gradient_checkpointing:
            # Checkpointed blocks need an input that carries gradients (frozen embeddings).
            getattr(model, "enable_input_require_grads", lambda: None)()
        model.to(self.device)
        self._initial = {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
        self._trainable = [
            (p, _strip_adapter_name(name))
            for name, p in model.named_parameters()
            if p.requires_grad
        ]
        self._peft, self._adapter = model, adapter
        self.builds += 1
        return model

    def layout(self) -> AdapterLayout:
        """The adapter layout of this trainer's model (as the coordinator derives it)."""
        if self._model_arg is None:
            return derive_layout(self.spec, self.location)
        return layout_of(get_peft_model_state_dict(self.peft_model(AdapterConfig(1, 1.0))))

    def load_model(
        self,
        adapter: AdapterConfig,
        *,
        incoming: Mapping[str, torch.Tensor],
        private: Mapping[str, torch.Tensor] | None = None,
        frozen_parts: Iterable[str] = frozenset(),
    ) -> PeftModel:
        """The peft model with ``incoming`` and ``private`` loaded (checked), in eval mode.

        Parts given by neither get peft's initial values (B = 0, A and a new head drawn from
        :data:`INIT_SEED`). Parameters of ``frozen_parts`` are not trained and must be given.
        """
        frozen = check_parts("frozen_parts", frozen_parts, adapter.adapter_type)
        model = self.peft_model(adapter)
        private = dict(private or {})
        expected = {key: tensor.shape for key, tensor in self._initial.items()}
        check_tensors("incoming", incoming, expected)
        check_tensors("private", private, expected)
        overlap = sorted(set(incoming) & set(private))
        if overlap:
            raise ValueError(f"keys both received and private (ambiguous): {overlap[:5]}")
        given = set(incoming) | set(private)
        # A frozen tensor nobody sent would stay at this process's initial value: every client
        # would train against a different A (FFA-LoRA needs the shared seed's A).
        missing_frozen = sorted(k for k in expected if part_of(k) in frozen and k not in given)
        if missing_frozen:
            raise ValueError(f"frozen part(s) must be received, missing: {missing_frozen[:5]}")
        # Load a complete state dict: peft raises KeyError on a partial one with modules_to_save.
        merged = dict(self._initial)
        for key, tensor in {**incoming, **private}.items():
            merged[key] = tensor.detach().to(self.device, dtype=merged[key].dtype)
        with quiet_vera():
            result = set_peft_model_state_dict(model, merged)
        unexpected = list(getattr(result, "unexpected_keys", []))
        if unexpected:  # cannot happen after check_tensors; guards against peft changes
            raise RuntimeError(f"peft did not load: {unexpected[:5]}")
        for param, key in self._trainable:
            param.requires_grad_(part_of(key) not in frozen)
        return model.eval()

    # ------------------------------------------------------------------ training

    def train(
        self,
        adapter: AdapterConfig,
        *,
        incoming: Mapping[str, torch.Tensor],
        private: Mapping[str, torch.Tensor] | None = None,
        shared_parts: Iterable[str],
        frozen_parts: Iterable[str] = frozenset(),
        train_data: LocalDataset,
        val_data: LocalDataset | None = None,
        settings: TrainSettings,
        on_step: Callable[[int, int], None] | None = None,
    ) -> TrainResult:
        """Train one round locally; returns the shared update, the private tensors and metrics.

        ``shared_parts`` are the parts the job's strategy uploads (``{"lora_A", "lora_B",
        "extra"}`` for RBLA, ``{"lora_A"}`` for FedSA, ``{"vera_lambda_d"}`` for FedSA-VeRA,
        ``{"lora_B", "extra"}`` with ``frozen_parts={"lora_A"}`` for FFA). Metrics:
        ``train_loss`` (mean per sample, or per label token for a causal LM), ``val_loss`` and,
        for a classifier, ``val_accuracy`` (when ``val_data`` is given), ``train_seconds`` and
        ``steps``. ``on_step(done, total)`` reports progress.
        """
        shared = check_parts("shared_parts", shared_parts, adapter.adapter_type)
        frozen = check_parts("frozen_parts", frozen_parts, adapter.adapter_type)
        if not shared:
            raise ValueError("shared_parts is empty: the update would contain nothing")
        if shared & frozen:
            raise ValueError(f"parts {sorted(shared & frozen)} are both shared and frozen")
        if len(train_data) == 0:
            raise ValueError("train_data is empty")
        model = self.load_model(adapter, incoming=incoming, private=private, frozen_parts=frozen)
        started = time.perf_counter()
        with self._seeded(settings.seed) if self.trains_at_random else contextlib.nullcontext():
            train_loss, steps = fit(
                model,
                train_data,
                self.spec.task_type,
                settings,
                device=self.device,
                precision=self.precision,
                on_step=on_step,
            )
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        metrics = {
            "train_loss": train_loss,
            "train_seconds": time.perf_counter() - started,
            "steps": float(steps),
        }
        if val_data is not None and len(val_data):
            metrics.update(self._observe(model, val_data, settings.eval_batch_size).metrics("val_"))
            metrics.pop("val_n_samples")
        state = get_peft_model_state_dict(model)
        upload = {k: v for k, v in state.items() if part_of(k) in shared}
        if not upload:
            raise ValueError(f"shared_parts {sorted(shared)} match no tensor of this adapter")
        kept = {
            key: tensor.detach().to("cpu", torch.float32).clone()
            for key, tensor in state.items()
            if part_of(key) not in shared | frozen
        }
        metadata = {
            **adapter.metadata(),
            "n_samples": str(len(train_data)),
            "parts": ",".join(sorted(shared)),
        }
        return TrainResult(
            update=encode_update(upload, metadata),
            private=kept,
            n_samples=len(train_data),
            metrics=metrics,
        )

    # ------------------------------------------------------------------ observation

    def evaluate(
        self,
        adapter: AdapterConfig,
        *,
        incoming: Mapping[str, torch.Tensor],
        private: Mapping[str, torch.Tensor] | None = None,
        data: LocalDataset,
        batch_size: int = 64,
    ) -> dict[str, float]:
        """``loss``, ``accuracy`` (classifiers) and ``n_samples`` of incoming + private on data."""
        model = self.load_model(adapter, incoming=incoming, private=private)
        return self._observe(model, data, batch_size).metrics()

    def base_losses(self, data: LocalDataset, *, batch_size: int = 64) -> np.ndarray:
        """Per-sample losses of the base model (the initial global model, every B being zero):
        the observation pass of AutoRank's loss entropy, before any adapter exists."""
        model = self.base_model() if self._peft is None else self._peft
        disabled = self._peft.disable_adapter() if self._peft is not None else None
        with disabled or contextlib.nullcontext():
            losses = self._observe(model, data, batch_size).losses
        return losses.numpy().astype(np.float64)

    def _observe(self, model: nn.Module, data: LocalDataset, batch_size: int) -> Observation:
        return observe(
            model,
            data,
            self.spec.task_type,
            batch_size=batch_size,
            device=self.device,
            precision=self.precision,
        )

    @property
    def trains_at_random(self) -> bool:
        """Whether training may draw from torch's process-wide RNG (dropout, a handed-in
        module's forward). The built-in MLPs without LoRA dropout draw nothing (batches have
        their own generator): they train unseeded, without :meth:`_seeded`'s lock."""
        builtin = self.spec.is_builtin and self._model_arg is None
        return not builtin or self.spec.lora_dropout > 0

    @contextlib.contextmanager
    def _seeded(self, seed: int) -> Iterator[None]:
        # Seed peft's init and dropout without disturbing the caller's global RNG streams. The
        # RNG is process-wide: under BUILD_LOCK no other thread (simulated clients) reseeds or
        # draws from it meanwhile, so each trains what it would alone, one at a time.
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with BUILD_LOCK, torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield
