"""Local LoRA / rsLoRA / VeRA training on the device, built on peft, for any torch classifier.

Every call builds a *fresh* peft model at the rank the coordinator assigned, loads what the
coordinator sent (``incoming``) plus what this device kept from earlier rounds (``private``),
trains, and returns only the parts the job's strategy shares. Nothing survives between calls in
the trainer itself: persistence is :class:`client_sdk.state.DeviceState`'s job.
"""

from __future__ import annotations

import contextlib
import copy
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from peft import (
    LoraConfig,
    PeftModel,
    VeraConfig,
    get_peft_model,
    get_peft_model_state_dict,
    set_peft_model_state_dict,
)
from torch import nn

from client_sdk.trainer_data import (
    Data,
    as_tensors,
    fit,
    per_sample_cross_entropy,
    resolve_device,
)
from client_sdk.trainer_parts import (
    AdapterLayout,
    TrainResult,
    check_parts,
    check_tensors,
    decode_update,
    encode_update,
    module_of,
    part_of,
)
from client_sdk.trainer_settings import AdapterConfig, TrainSettings

__all__ = [
    "AdapterConfig",
    "AdapterLayout",
    "LoraTrainer",
    "TrainResult",
    "TrainSettings",
    "decode_update",
    "encode_update",
    "part_of",
]

_ADAPTER_NAME = "default"


def _strip_adapter_name(param_name: str) -> str:
    """Parameter name -> state-dict key: ``fc1.lora_A.default.weight`` -> ``fc1.lora_A.weight``."""
    return param_name.replace(f".{_ADAPTER_NAME}.", ".").removesuffix(f".{_ADAPTER_NAME}")


class LoraTrainer:
    """Trains peft adapters of a frozen base model on local data (class logits + cross-entropy).

    ``model`` is the base model (deep-copied for every round, so it is never modified) or a
    zero-argument factory returning a fresh one (better for large models: no idle copy kept).
    ``target_modules`` are the module names peft adapts; ``head_modules`` are trained in full
    through peft's ``modules_to_save``. ``device="auto"`` picks CUDA when available. Torch's
    thread count is left to the caller.
    """

    def __init__(
        self,
        model: nn.Module | Callable[[], nn.Module],
        target_modules: Sequence[str],
        head_modules: Sequence[str] = (),
        *,
        device: str | torch.device = "auto",
        vera_prng_key: int = 0,
    ) -> None:
        if not target_modules:
            raise ValueError("target_modules must name at least one module to adapt")
        self._model = model
        self.target_modules = list(target_modules)
        self.head_modules = list(head_modules)
        self.device = resolve_device(device)
        # Fixed key: VeRA's frozen projections are regenerated from it, so every client and the
        # server get the same ones without sending them (save_projection=False).
        self.vera_prng_key = vera_prng_key

    # ------------------------------------------------------------------ model building

    def _fresh_base(self) -> nn.Module:
        if isinstance(self._model, nn.Module):
            return copy.deepcopy(self._model)
        base = self._model()
        if not isinstance(base, nn.Module):
            raise TypeError(f"model factory returned {type(base).__name__}, not an nn.Module")
        return base

    def _build(self, adapter: AdapterConfig) -> PeftModel:
        save = self.head_modules or None
        if adapter.adapter_type == "lora":
            config: LoraConfig | VeraConfig = LoraConfig(
                r=adapter.rank,
                # peft annotates int, but the scale is alpha / r in float: float alphas are fine.
                lora_alpha=adapter.lora_alpha,  # type: ignore[arg-type]
                use_rslora=adapter.use_rslora,
                lora_dropout=0.0,
                target_modules=self.target_modules,
                modules_to_save=save,
            )
        else:  # VeRA has no alpha or rsLoRA scaling; its lambdas carry the scale
            with _quiet_vera():
                config = VeraConfig(
                    r=adapter.rank,
                    target_modules=self.target_modules,
                    modules_to_save=save,
                    projection_prng_key=self.vera_prng_key,
                    save_projection=False,
                )
        with _quiet_vera():
            model = get_peft_model(self._fresh_base(), config)
        return model.to(self.device)

    def layout(self, rank: int = 1) -> AdapterLayout:
        """Read the adapter layout off a real peft model built at ``rank``."""
        model = self._build(AdapterConfig(rank, lora_alpha=float(rank)))
        state = get_peft_model_state_dict(model)
        modules: dict[str, tuple[int, int]] = {}
        extra: dict[str, tuple[int, ...]] = {}
        for key, tensor in state.items():
            if part_of(key) == "lora_A":
                module = module_of(key)
                assert module is not None
                d_out = state[f"{module}.lora_B.weight"].shape[0]
                modules[module] = (int(tensor.shape[1]), int(d_out))
            elif part_of(key) == "extra":
                extra[key] = tuple(int(s) for s in tensor.shape)
        return AdapterLayout(modules=modules, extra=extra)

    def load_model(
        self,
        adapter: AdapterConfig,
        *,
        incoming: Mapping[str, torch.Tensor],
        private: Mapping[str, torch.Tensor] | None = None,
        frozen_parts: Iterable[str] = frozenset(),
        seed: int = 0,
    ) -> PeftModel:
        """A peft model with ``incoming`` and ``private`` loaded (checked), in eval mode.

        Parts given by neither keep peft's initialisation (B = 0, A random from ``seed``).
        Parameters of ``frozen_parts`` get ``requires_grad=False`` and must have been given.
        """
        frozen = check_parts("frozen_parts", frozen_parts, adapter.adapter_type)
        with self._seeded(seed):
            model = self._build(adapter)
        private = dict(private or {})
        state = get_peft_model_state_dict(model)
        expected = {key: tensor.shape for key, tensor in state.items()}
        check_tensors("incoming", incoming, expected)
        check_tensors("private", private, expected)
        overlap = sorted(set(incoming) & set(private))
        if overlap:
            raise ValueError(f"keys both received and private (ambiguous): {overlap[:5]}")
        given = set(incoming) | set(private)
        # A frozen tensor nobody sent would stay at this process's random init: every client
        # would train against a different A (FFA-LoRA needs the shared seed's A).
        missing_frozen = sorted(k for k in expected if part_of(k) in frozen and k not in given)
        if missing_frozen:
            raise ValueError(f"frozen part(s) must be received, missing: {missing_frozen[:5]}")
        # Load a complete state dict: peft raises KeyError on a partial one with modules_to_save.
        merged = {key: tensor.detach().clone() for key, tensor in state.items()}
        for key, tensor in {**incoming, **private}.items():
            merged[key] = tensor.detach().to(dtype=merged[key].dtype)
        with _quiet_vera():
            result = set_peft_model_state_dict(model, merged)
        unexpected = list(getattr(result, "unexpected_keys", []))
        if unexpected:  # cannot happen after check_tensors; guards against peft changes
            raise RuntimeError(f"peft did not load: {unexpected[:5]}")
        for name, param in model.named_parameters():
            if param.requires_grad and part_of(_strip_adapter_name(name)) in frozen:
                param.requires_grad_(False)
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
        train_data: Data,
        val_data: Data | None = None,
        settings: TrainSettings,
        on_step: Callable[[int, int], None] | None = None,
    ) -> TrainResult:
        """Train one round locally; returns the shared update, the private tensors and metrics.

        ``shared_parts`` are the parts the job's strategy uploads (``{"lora_A", "lora_B",
        "extra"}`` for RBLA, ``{"lora_A"}`` for FedSA, ``{"vera_lambda_d"}`` for FedSA-VeRA,
        ``{"lora_B", "extra"}`` with ``frozen_parts={"lora_A"}`` for FFA). Metrics:
        ``train_loss`` (mean over all steps), ``val_loss``, ``val_accuracy`` (when ``val_data``
        is given), ``train_seconds`` and ``steps``. ``on_step(done, total)`` reports progress.
        """
        shared = check_parts("shared_parts", shared_parts, adapter.adapter_type)
        frozen = check_parts("frozen_parts", frozen_parts, adapter.adapter_type)
        if not shared:
            raise ValueError("shared_parts is empty: the update would contain nothing")
        if shared & frozen:
            raise ValueError(f"parts {sorted(shared & frozen)} are both shared and frozen")
        x, y = as_tensors(train_data, self.device)
        model = self.load_model(
            adapter, incoming=incoming, private=private, frozen_parts=frozen, seed=settings.seed
        )
        started = time.perf_counter()
        with self._seeded(settings.seed):
            train_loss, steps = fit(model, x, y, settings, on_step)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        metrics = {
            "train_loss": train_loss,
            "train_seconds": time.perf_counter() - started,
            "steps": float(steps),
        }
        if val_data is not None:
            vx, vy = as_tensors(val_data, self.device)
            losses, preds = per_sample_cross_entropy(model, vx, vy, settings.eval_batch_size)
            metrics["val_loss"] = float(losses.mean())
            metrics["val_accuracy"] = float((preds == vy).float().mean())
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
            "n_samples": str(len(y)),
            "parts": ",".join(sorted(shared)),
        }
        return TrainResult(
            update=encode_update(upload, metadata), private=kept, n_samples=len(y), metrics=metrics
        )

    # ------------------------------------------------------------------ observation

    def evaluate(
        self,
        adapter: AdapterConfig,
        *,
        incoming: Mapping[str, torch.Tensor],
        private: Mapping[str, torch.Tensor] | None = None,
        data: Data,
        batch_size: int = 256,
    ) -> dict[str, float]:
        """``loss``, ``accuracy`` and ``n_samples`` of the adapter (incoming + private) on data."""
        losses, preds, y = self._observe(adapter, incoming, private, data, batch_size)
        return {
            "loss": float(losses.mean()),
            "accuracy": float((preds == y).float().mean()),
            "n_samples": float(len(y)),
        }

    def per_sample_losses(
        self,
        adapter: AdapterConfig,
        *,
        incoming: Mapping[str, torch.Tensor],
        private: Mapping[str, torch.Tensor] | None = None,
        data: Data,
        batch_size: int = 256,
    ) -> np.ndarray:
        """Per-sample cross-entropy of one observation pass (no update kept), for AutoRank's m4."""
        losses, _, _ = self._observe(adapter, incoming, private, data, batch_size)
        return losses.detach().cpu().numpy().astype(np.float64)

    def _observe(
        self,
        adapter: AdapterConfig,
        incoming: Mapping[str, torch.Tensor],
        private: Mapping[str, torch.Tensor] | None,
        data: Data,
        batch_size: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        model = self.load_model(adapter, incoming=incoming, private=private)
        x, y = as_tensors(data, self.device)
        losses, preds = per_sample_cross_entropy(model, x, y, batch_size)
        return losses, preds, y

    @contextlib.contextmanager
    def _seeded(self, seed: int) -> Iterator[None]:
        # Seed peft's init and dropout without disturbing the caller's global RNG streams.
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield


@contextlib.contextmanager
def _quiet_vera() -> Iterator[None]:
    # save_projection=False is deliberate (every party regenerates the frozen projections from
    # the shared PRNG key), but peft warns about it on every config, build and load.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Specified to not (save|load) vera_A")
        yield
