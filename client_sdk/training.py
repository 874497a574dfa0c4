"""``LoraRound``: a :class:`~client_sdk.trainer.LoraTrainer` and local data as a train callback.

This is what :meth:`client_sdk.Client.run` uses when it is handed a ``LoraTrainer``: it decodes
the adapter the coordinator sent, reloads the device's private tensors (FedSA's B and head, or
VeRA's lambda_b) when they were trained at the same rank and adapter type, trains, and returns
the shared update plus the new private tensors as safetensors bytes. Needs the ``train`` extra.
"""

from __future__ import annotations

import zlib

from client_sdk.profile import ComplexityStats, profile
from client_sdk.rounds import LocalUpdate, RoundContext
from client_sdk.trainer import (
    AdapterConfig,
    LoraTrainer,
    TrainSettings,
    decode_update,
    encode_update,
)
from client_sdk.trainer_data import Data, as_tensors


class LoraRound:
    """Train callback for :class:`~client_sdk.Client` built from a trainer and ``(X, y)`` data.

    ``val_data`` (optional) gives the ``val_loss`` / ``val_accuracy`` metrics reported with
    every update; ``num_classes`` normalises the label entropy of :meth:`stats`.
    """

    def __init__(
        self,
        trainer: LoraTrainer,
        data: Data,
        val_data: Data | None = None,
        *,
        num_classes: int | None = None,
    ) -> None:
        self.trainer = trainer
        self.data = data
        self.val_data = val_data
        self.num_classes = num_classes

    def stats(self) -> ComplexityStats:
        """AutoRank statistics of the training data: labels plus one loss pass of the base.

        Before round 1 every LoRA B is zero, so the initial global model's losses are the base
        model's: one observation pass at rank 1 with nothing loaded gives them.
        """
        _, y = as_tensors(self.data, self.trainer.device)
        losses = self.trainer.per_sample_losses(AdapterConfig(1), incoming={}, data=self.data)
        return profile(y.cpu().numpy(), losses, num_classes=self.num_classes)

    def __call__(self, ctx: RoundContext) -> LocalUpdate:
        """Train one round (see :class:`~client_sdk.rounds.RoundContext`)."""
        task = ctx.task
        incoming, _ = decode_update(ctx.adapter)
        private = None
        if ctx.private is not None:
            tensors, meta = decode_update(ctx.private)
            # Private tensors of another rank or adapter type cannot be loaded (and mean
            # the job changed this client's assignment): start those parts afresh.
            if meta.get("rank") == str(task.rank) and meta.get("adapter_type") == (
                task.adapter_type
            ):
                private = {k: v for k, v in tensors.items() if k not in incoming}
        # Same seed for the same client and round: a retrained round gives the same bytes.
        seed = zlib.crc32(f"{task.seed}:{task.round_number}:{ctx.client_id}".encode())
        result = self.trainer.train(
            task.adapter,
            incoming=incoming,
            private=private,
            shared_parts=task.shared_parts,
            frozen_parts=task.frozen_parts,
            train_data=self.data,
            val_data=self.val_data,
            settings=TrainSettings.from_dict(task.train_settings(seed)),
            on_step=ctx.report,
        )
        kept = None
        if result.private:
            kept = encode_update(
                result.private,
                {
                    "rank": str(task.rank),
                    "adapter_type": task.adapter_type,
                    "strategy": task.strategy,
                    "round": str(task.round_number),
                },
            )
        return LocalUpdate(
            update=result.update,
            n_samples=result.n_samples,
            metrics=dict(result.metrics),
            private=kept,
        )
