"""``LoraRound``: a :class:`~client_sdk.trainer.LoraTrainer` and local data as a train callback.

This is what :meth:`client_sdk.Client.run` uses when it is handed a ``LoraTrainer``: it decodes
the adapter the coordinator sent, reloads the device's private tensors (FedSA's B and head, or
VeRA's lambda_b) when they were trained at the same rank and adapter type, trains, and returns
the shared update plus the new private tensors as safetensors bytes. Needs the ``train`` extra.
"""

from __future__ import annotations

from client_sdk.profile import ComplexityStats, profile
from client_sdk.rounds import LocalUpdate, RoundContext
from client_sdk.text_data import LocalDataset
from client_sdk.trainer import LoraTrainer
from client_sdk.trainer_settings import TrainSettings
from client_sdk.wire_format import decode_update, encode_update


class LoraRound:
    """Train callback for :class:`~client_sdk.Client` built from a trainer and local data.

    ``val_data`` (optional) gives the ``val_loss`` (and, for a classifier, ``val_accuracy``)
    metrics reported with every update.
    """

    def __init__(
        self, trainer: LoraTrainer, data: LocalDataset, val_data: LocalDataset | None = None
    ) -> None:
        self.trainer = trainer
        self.data = data
        self.val_data = val_data

    @property
    def model_sha256(self) -> str | None:
        """The config hash of the trainer's model, sent at enrolment to prove it is the job's."""
        return self.trainer.model_sha256

    def stats(self) -> ComplexityStats:
        """AutoRank statistics of the training data: labels (classifiers) plus one loss pass.

        Before round 1 every LoRA B is zero, so the initial global model's losses are the base
        model's.
        """
        losses = self.trainer.base_losses(self.data)
        return profile(self.data.labels, losses, num_classes=self.trainer.num_labels)

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
        result = self.trainer.train(
            task.adapter,
            incoming=incoming,
            private=private,
            shared_parts=task.shared_parts,
            frozen_parts=task.frozen_parts,
            train_data=self.data,
            val_data=self.val_data,
            # Same seed for the same client and round: a retrained round, or the same round
            # of a rerun job, gives the same bytes.
            settings=TrainSettings.from_dict(task.train_settings(ctx.training_seed)),
            on_step=ctx.report,
        )
        kept = None
        if result.private:
            kept = encode_update(
                result.private,
                {
                    **task.adapter.metadata(),
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
