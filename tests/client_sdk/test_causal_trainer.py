"""The trainer on a Hugging Face causal LM built from a config: loss, checkpointing, precision
and the dtype its base loads in."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from client_sdk.device_data import read_training_data
from client_sdk.model_spec import ModelSpec, locate_model
from client_sdk.trainer import LoraTrainer
from client_sdk.trainer_settings import AdapterConfig, TrainSettings
from client_sdk.training_loop import autocast_dtype, observe
from client_sdk.wire_format import decode_update
from tests.hf_models import tiny_llama, write_causal_lm_jsonl

SETTINGS = TrainSettings(epochs=1, lr=5e-3, batch_size=8, optimizer="adamw", seed=3)
PARTS = {"lora_A", "lora_B"}


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelSpec, Path, object]:
    root = tmp_path_factory.mktemp("llama")
    model_dir = tiny_llama(root / "model")
    spec = ModelSpec(source=str(model_dir), task_type="CAUSAL_LM", target_modules=["q_proj"])
    data_file = write_causal_lm_jsonl(root / "data.jsonl", n=64)
    train, _ = read_training_data(data_file, None, spec).datasets(
        locate_model(str(model_dir)), val_fraction=0
    )
    return spec, model_dir, train


def _update(trainer: LoraTrainer, train: object) -> dict[str, torch.Tensor]:
    result = trainer.train(
        AdapterConfig(4, lora_alpha=8.0), incoming={}, shared_parts=PARTS,
        train_data=train, settings=SETTINGS,
    )  # fmt: skip
    return decode_update(result.update)[0]


def test_gradient_checkpointing_changes_memory_not_the_math(llama) -> None:
    spec, _, train = llama
    plain = _update(LoraTrainer(spec, device="cpu", gradient_checkpointing=False), train)
    checkpointed = LoraTrainer(spec, device="cpu", gradient_checkpointing=True)
    assert checkpointed.base_model().is_activation_checkpointing
    again = _update(checkpointed, train)
    assert plain.keys() == again.keys()
    for key in plain:
        assert torch.allclose(plain[key], again[key], atol=1e-5), key
    assert any(v.abs().sum() > 0 for k, v in plain.items() if "lora_B" in k)


def test_the_loss_is_the_models_own_next_token_loss(llama) -> None:
    """The trainer's per-sample loss equals transformers' own loss with the same labels."""
    spec, _, train = llama
    trainer = LoraTrainer(spec, device="cpu")
    batch = next(train.batches(1, seed=None))

    class One:
        labels = None

        def __len__(self) -> int:
            return 1

        def batches(self, batch_size: int, *, seed: int | None) -> Iterator[dict]:
            yield batch

    ours = observe(trainer.base_model(), One(), "CAUSAL_LM", device=torch.device("cpu"))
    with torch.no_grad():
        theirs = trainer.base_model()(**batch).loss
    assert float(ours.losses[0]) == pytest.approx(float(theirs), rel=1e-5)


def test_cpu_trains_in_fp32_and_bad_precision_is_refused(llama) -> None:
    spec, _, _ = llama
    assert autocast_dtype(torch.device("cpu"), "auto") is None
    assert autocast_dtype(torch.device("cpu"), "bf16") is None
    assert LoraTrainer(spec, device="cpu", precision="bf16").precision == "fp32"
    assert not LoraTrainer(spec, device="cpu").gradient_checkpointing  # on only for CUDA
    with pytest.raises(ValueError, match="precision"):
        LoraTrainer(spec, precision="int4")


def _saved_in(dtype: torch.dtype, path: Path) -> Path:
    """The tiny Llama, its weights rounded to bf16, saved with ``save_pretrained`` in ``dtype``."""
    tiny_llama(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.to(torch.bfloat16).to(dtype).save_pretrained(path)
    saved = json.loads((path / "config.json").read_text())["dtype"]
    assert saved == str(dtype).removeprefix("torch.")
    return path


def test_a_bf16_checkpoint_trains_in_fp32_like_the_same_weights_saved_in_fp32(
    tmp_path, llama
) -> None:
    """transformers 5 loads a checkpoint in the dtype it was saved in unless told otherwise; the
    SDK loads float32, so the base, the LoRA factors and a trained head copy are float32 and the
    update is the one the same weights saved in float32 give, bit for bit."""
    _, _, train = llama
    adapter = AdapterConfig(4, lora_alpha=8.0)
    updates = {}
    for dtype in (torch.bfloat16, torch.float32):
        model_dir = _saved_in(dtype, tmp_path / str(dtype))
        spec = ModelSpec(
            source=str(model_dir), task_type="CAUSAL_LM", target_modules=["q_proj"],
            modules_to_save=["lm_head"],
        )  # fmt: skip
        trainer = LoraTrainer(spec, device="cpu")
        assert {p.dtype for p in trainer.base_model().parameters()} == {torch.float32}
        result = trainer.train(
            adapter, incoming={}, shared_parts={"lora_A", "lora_B", "extra"},
            train_data=train, settings=SETTINGS,
        )  # fmt: skip
        trained = [p for p in trainer.peft_model(adapter).parameters() if p.requires_grad]
        assert {p.dtype for p in trained} == {torch.float32}
        updates[dtype] = decode_update(result.update)[0]
    from_bf16, from_fp32 = updates[torch.bfloat16], updates[torch.float32]
    assert any("lm_head" in key for key in from_bf16)
    assert from_bf16.keys() == from_fp32.keys()
    for key in from_bf16:
        assert from_bf16[key].dtype == torch.float32, key
        assert torch.equal(from_bf16[key], from_fp32[key]), key
