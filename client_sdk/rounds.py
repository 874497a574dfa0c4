"""What the client loop exchanges: the coordinator's train task, the train callback's input
and output, progress events and the run's outcome. Plain dataclasses, no torch."""

from __future__ import annotations

import base64
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from client_sdk.trainer_settings import AdapterConfig


@dataclass(frozen=True)
class RoundTask:
    """A ``train`` task from the coordinator: what to train this round and where to send it."""

    job_id: str
    round_id: str
    round_number: int
    rank: int
    lora_alpha: float
    use_rslora: bool
    adapter_type: str
    strategy: str
    shared_parts: tuple[str, ...]
    frozen_parts: tuple[str, ...]
    training: Mapping[str, Any]
    model: Mapping[str, Any] | None
    seed: int
    adapter_url: str
    upload_url: str
    deadline_at: str
    # The adapter itself when the coordinator sent it with the task (a small one), else None:
    # then it is downloaded from adapter_url.
    adapter_bytes: bytes | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RoundTask:
        """Parse the JSON of ``GET /api/v1/clients/me/task`` with ``action == "train"``."""
        return cls(
            job_id=str(data["job_id"]),
            round_id=str(data["round_id"]),
            round_number=int(data["round_number"]),
            rank=int(data["rank"]),
            lora_alpha=float(data["lora_alpha"]),
            use_rslora=bool(data["use_rslora"]),
            adapter_type=str(data["adapter_type"]),
            strategy=str(data["strategy"]),
            shared_parts=tuple(data["shared_parts"]),
            frozen_parts=tuple(data["frozen_parts"]),
            training=dict(data["training"]),
            model=data.get("model"),
            seed=int(data["seed"]),
            adapter_url=str(data["adapter_url"]),
            upload_url=str(data["upload_url"]),
            deadline_at=str(data["deadline_at"]),
            adapter_bytes=base64.b64decode(data["adapter"]) if data.get("adapter") else None,
        )

    @property
    def adapter(self) -> AdapterConfig:
        """The adapter this round trains (rank, scaling, kind)."""
        return AdapterConfig(self.rank, self.lora_alpha, self.use_rslora, self.adapter_type)

    def train_settings(self, seed: int) -> dict[str, Any]:
        """The job's local settings as :class:`~client_sdk.trainer_settings.TrainSettings` keys."""
        t = self.training
        out: dict[str, Any] = {
            "epochs": t.get("epochs"),
            "max_steps": t.get("steps"),
            "lr": float(t.get("lr", 1e-3)),
            "batch_size": int(t.get("batch_size", 16)),
            "gradient_accumulation_steps": int(t.get("gradient_accumulation_steps", 1)),
            "optimizer": str(t.get("optimizer", "adam")),
            "seed": seed,
        }
        return out


@dataclass
class RoundContext:
    """What a train callback gets: the task, the adapter bytes, and this device's private state.

    ``private`` is what the callback returned as ``LocalUpdate.private`` in an earlier round
    (possibly before a restart), or None. ``client_name`` is the name the client enrolled with
    (None without one). Call ``report(done, total)`` to show progress.
    """

    task: RoundTask
    adapter: bytes
    private: bytes | None
    client_id: str
    client_name: str | None = None
    report: Callable[[int, int], None] = lambda done, total: None

    @property
    def training_seed(self) -> int:
        """The seed of this round's local training, from the job's seed, the round and the
        client's name: a rerun of the job (same seed, same names) trains the same updates. A
        client without a name falls back to its id, which is new at every enrolment: its
        training is not reproducible from one run of a job to the next."""
        identity = self.client_id if self.client_name is None else f"name:{self.client_name}"
        return zlib.crc32(f"{self.task.seed}:{self.task.round_number}:{identity}".encode())


@dataclass
class LocalUpdate:
    """What a train callback returns: the update (safetensors bytes holding exactly the task's
    ``shared_parts``), its sample count and metrics, and optionally device-only state to keep."""

    update: bytes
    n_samples: int
    metrics: dict[str, float] = field(default_factory=dict)
    private: bytes | None = None


#: A train callback: one round of local training.
TrainFn = Callable[[RoundContext], LocalUpdate]


@dataclass(frozen=True)
class Progress:
    """One progress event. ``event`` is one of ``enrolled``, ``resumed``, ``waiting``,
    ``download``, ``train``, ``upload``, ``accepted``, ``skipped``, ``offline``, ``finished``;
    ``done``/``total`` count bytes for transfers and optimiser steps for ``train``."""

    event: str
    round: int | None = None
    done: int = 0
    total: int | None = None
    message: str = ""


@dataclass
class RunResult:
    """How a :meth:`Client.run` ended."""

    status: str
    reason: str | None
    client_id: str
    accepted_rounds: list[int] = field(default_factory=list)
    bytes_uploaded: int = 0
    bytes_downloaded: int = 0
