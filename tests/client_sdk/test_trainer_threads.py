"""LoraTrainers in threads of one process (``flaas simulate``) train what each trains alone.

torch's RNG is process-wide: a thread seeding it for its training, or drawing dropout masks
from it, must not change what another thread's model is initialised or trained with.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from client_sdk.tasks import get_task
from client_sdk.trainer import LoraTrainer
from client_sdk.trainer_settings import AdapterConfig, TrainSettings

pytest.importorskip("peft")

SEEDS = range(4)


@pytest.fixture(scope="module", autouse=True)
def _threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize("dropout", [0.0, 0.3], ids=["no-dropout", "dropout"])
def test_concurrent_trainers_train_the_bytes_they_train_alone(dropout: float) -> None:
    task = get_task("digits")
    arrays = task.load(seed=0)
    data = task.dataset(arrays.x_train[:400], arrays.y_train[:400])
    spec = task.model_spec().model_copy(update={"lora_dropout": dropout})

    def train(seed: int) -> bytes:
        trainer = LoraTrainer(spec)  # a fresh one: its peft model is built (seeded) in here
        assert trainer.trains_at_random == (dropout > 0)
        settings = TrainSettings(epochs=2, lr=1e-2, batch_size=16, optimizer="adam", seed=seed)
        # Nothing incoming: A and the head are the trainer's seeded initial values.
        result = trainer.train(
            AdapterConfig(4, 8.0),
            incoming={},
            shared_parts={"lora_A", "lora_B", "extra"},
            train_data=data,
            settings=settings,
        )
        return result.update

    alone = [train(seed) for seed in SEEDS]
    with ThreadPoolExecutor(max_workers=len(SEEDS)) as pool:
        together = list(pool.map(train, SEEDS))
    assert len(set(alone)) == len(SEEDS), "the seeds should train different updates"
    assert together == alone
