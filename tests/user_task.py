"""A task as user code writes and registers one, for the tests of the open task registry."""

from __future__ import annotations

import numpy as np
import pytest

from client_sdk import tasks
from client_sdk.model_spec import ModelSpec
from client_sdk.tasks import Task, TaskData, get_task
from client_sdk.text_data import LocalDataset


class DoubledDigits(Task):
    """The built-in digits task under another name, its training data twice over."""

    name = "digits-doubled"
    num_classes = 10
    default_settings = get_task("digits").default_settings

    def load(self, seed: int = 0) -> TaskData:
        data = get_task("digits").load(seed)
        return TaskData(
            np.concatenate([data.x_train] * 2), np.concatenate([data.y_train] * 2),
            data.x_test, data.y_test,
        )  # fmt: skip

    def model_spec(self) -> ModelSpec:
        return get_task("digits").model_spec()

    def dataset(self, x: np.ndarray, y: np.ndarray) -> LocalDataset:
        return get_task("digits").dataset(x, y)


def forget_registrations(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tasks a test registers after this call are forgotten when the test ends."""
    monkeypatch.setattr(tasks, "_REGISTRY", dict(tasks._REGISTRY))
