"""Device accuracy for the quality benchmark: each device's own model on its label mix.

A device's model after the last round is what ``flaas client export`` would write: the final
global adapter cut to the device's rank (``GET /api/v1/clients/me/adapter``, with the device's
stored credential) joined with the tensors the device kept private (FedSA's B and head). It is
scored on the task's whole test set, each class weighted by its share of the device's training
labels, so a device is judged on the distribution it serves, with every test image counted.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import httpx


class DeviceScorer:
    """``on_finished`` hook of :func:`server.demo.run_demo`; ``accuracies`` holds the result
    (one per device, in device order)."""

    def __init__(
        self, task_name: str, spec: dict[str, Any], clients: int, alpha: float, seed: int
    ) -> None:
        from client_sdk.simulate import make_shards
        from client_sdk.tasks import get_task

        self.task = get_task(task_name)
        data = self.task.load(seed=0)
        self.x_test, self.y_test = data.x_test, data.y_test
        # The same shards run_simulation cuts (deterministic per seed).
        shards = make_shards(data.y_train, data.x_train, clients, alpha, seed=seed)
        classes = self.task.num_classes
        self.label_shares = [
            np.bincount(s.y_train, minlength=classes) / len(s.y_train) for s in shards
        ]
        self.spec = spec
        self.accuracies: list[float] = []

    def __call__(self, http: httpx.Client, job_id: str, clients_dir: Path) -> None:
        from client_sdk.device_export import find_job_state
        from client_sdk.trainer import LoraTrainer
        from client_sdk.trainer_settings import AdapterConfig
        from client_sdk.wire_format import decode_update
        from server.aggregation import get_strategy
        from server.schemas.job_spec import JobSpec
        from server.services.strategies import client_alpha

        trainer = LoraTrainer(self.task.model_spec(), device="cpu")
        job_spec = JobSpec.model_validate(self.spec)
        strategy = get_strategy(job_spec.strategy)
        by_class = [
            self.task.dataset(self.x_test[self.y_test == c], self.y_test[self.y_test == c])
            for c in range(self.task.num_classes)
        ]
        for i, shares in enumerate(self.label_shares):
            state = find_job_state(clients_dir / f"client-{i:03d}", job_id)
            credentials = state.load_credentials()
            assert credentials is not None, f"device {i} holds no credential"
            response = http.get(
                "/api/v1/clients/me/adapter",
                headers={"Authorization": f"Bearer {credentials.token}"},
            )
            response.raise_for_status()
            incoming, _ = decode_update(response.content)
            private_bytes = state.load_private_bytes()
            private = None
            if private_bytes is not None:
                kept, _ = decode_update(private_bytes)
                private = {k: v for k, v in kept.items() if k not in incoming}
            rank = _rank_of(incoming)
            adapter = AdapterConfig(
                rank, client_alpha(job_spec, rank), strategy.use_rslora, strategy.adapter_type
            )
            accuracy = 0.0
            for c, share in enumerate(shares):
                if share > 0:
                    scores = trainer.evaluate(
                        adapter, incoming=incoming, private=private, data=by_class[c]
                    )
                    accuracy += float(share) * scores["accuracy"]
            self.accuracies.append(accuracy)


def _rank_of(tensors: dict[str, Any]) -> int:
    for key, tensor in tensors.items():
        if key.endswith("lora_A.weight"):
            return int(tensor.shape[0])
        if key.endswith("vera_lambda_d"):
            return int(tensor.shape[0])
    raise ValueError("the device's adapter holds no lora_A or vera_lambda_d")
