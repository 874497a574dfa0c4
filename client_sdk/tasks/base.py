"""The task interface and the pieces the built-in vision tasks share (MLP, seeded init, split)."""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from client_sdk.trainer_data import evaluate_classifier


@dataclass(frozen=True)
class TaskData:
    """A task's data: training inputs/labels and a held-out test split (numpy arrays)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def train(self) -> tuple[np.ndarray, np.ndarray]:
        """``(x_train, y_train)``, the shape the trainer takes."""
        return self.x_train, self.y_train

    @property
    def test(self) -> tuple[np.ndarray, np.ndarray]:
        """``(x_test, y_test)``."""
        return self.x_test, self.y_test


class Task(abc.ABC):
    """A built-in task: data shipped inside an installed package, a frozen base, adapter targets.

    ``build_model(seed)`` must return the identical base for the same seed in every process
    (every client and the server-side evaluator build their own copy).
    """

    name: str
    num_classes: int
    target_modules: list[str]
    head_modules: list[str]
    #: Local training settings a job uses unless it overrides them (TrainSettings.from_dict keys).
    default_settings: dict[str, Any]

    @abc.abstractmethod
    def load(self, seed: int = 0) -> TaskData:
        """Load the data and split it deterministically (the split depends only on ``seed``)."""

    @abc.abstractmethod
    def build_model(self, seed: int = 0) -> nn.Module:
        """The frozen base model, initialised deterministically from ``seed``."""

    def evaluate(
        self, model: nn.Module, x: Any, y: Any, *, batch_size: int = 256
    ) -> dict[str, float]:
        """``accuracy``, ``loss`` (mean cross-entropy) and ``n_samples`` of ``model`` on (x, y)."""
        return evaluate_classifier(model, (x, y), batch_size=batch_size)

    def __repr__(self) -> str:
        return f"<Task {self.name}: {self.num_classes} classes, adapts {self.target_modules}>"


class MLP(nn.Module):
    """``d_in -> hidden -> hidden -> classes`` with ReLU; fc1, fc2 hidden, fc3 the head."""

    def __init__(self, d_in: int, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


ModuleT = TypeVar("ModuleT", bound=nn.Module)


def seeded_init(factory: Callable[[], ModuleT], seed: int) -> ModuleT:
    """Call ``factory()`` with torch's CPU RNG seeded, leaving the caller's RNG state untouched.

    PyTorch's default Linear init draws from the global CPU generator, so seeding it around the
    constructor makes the random base bit-identical across processes for a given torch version.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = factory()
    return model


def stratified_split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int) -> TaskData:
    """Deterministic stratified train/test split (scikit-learn's, fixed ``random_state``)."""
    from sklearn.model_selection import train_test_split

    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_fraction, stratify=y, random_state=seed
    )
    return TaskData(
        x_train=np.ascontiguousarray(x_tr),
        y_train=np.ascontiguousarray(y_tr, dtype=np.int64),
        x_test=np.ascontiguousarray(x_te),
        y_test=np.ascontiguousarray(y_te, dtype=np.int64),
    )
