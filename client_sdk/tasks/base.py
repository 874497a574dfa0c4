"""The task interface and the pieces the built-in tasks share (MLP, seeded init, split)."""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from client_sdk.model_spec import ModelSpec
    from client_sdk.text_data import LocalDataset


@dataclass(frozen=True)
class TaskData:
    """A task's samples (features, or texts for a text task) and labels, split into a training
    part and a held-out test part (numpy arrays; index them to cut shards)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


class Task(abc.ABC):
    """A built-in demo task: data shipped inside an installed package, and the job's model.

    The model is a :class:`~client_sdk.model_spec.ModelSpec` like any user's: the same trainer
    trains it. ``dataset(x, y)`` turns a slice of the task's samples into what the trainer
    reads.
    """

    name: str
    num_classes: int
    #: Local training settings a job uses unless it overrides them (TrainSettings.from_dict keys).
    default_settings: dict[str, Any]

    @abc.abstractmethod
    def load(self, seed: int = 0) -> TaskData:
        """Load the data and split it deterministically (the split depends only on ``seed``)."""

    @abc.abstractmethod
    def model_spec(self) -> ModelSpec:
        """The job's ``model`` section for this task."""

    @abc.abstractmethod
    def dataset(self, x: np.ndarray, y: np.ndarray) -> LocalDataset:
        """Samples ``x`` with labels ``y`` (a slice of :meth:`load`'s arrays) as trainer input."""

    def __repr__(self) -> str:
        return f"<Task {self.name}: {self.num_classes} classes, model {self.model_spec().source}>"


class MLP(nn.Module):
    """``d_in -> hidden -> hidden -> classes`` with ReLU; fc1, fc2 hidden, fc3 the head."""

    def __init__(self, d_in: int, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, num_classes)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(inputs)))))
        return logits


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
