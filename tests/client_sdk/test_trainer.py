"""LoraTrainer on the built-in digits model: layout, parts, FedSA/FFA/VeRA/rsLoRA paths, a peft
model built once and reloaded every round, gradient accumulation, a tiny FL run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import client_sdk.trainer as trainer_module
from client_sdk.state import DeviceState
from client_sdk.tasks import get_task
from client_sdk.trainer import LoraTrainer, TrainResult
from client_sdk.trainer_settings import AdapterConfig, TrainSettings
from client_sdk.training_loop import resolve_device
from client_sdk.wire_format import decode_update

pytest.importorskip("peft")

ALL_LORA = {"lora_A", "lora_B", "extra"}
SETTINGS = TrainSettings(epochs=1, lr=1e-2, batch_size=16, optimizer="adam", seed=0)


@pytest.fixture(scope="module", autouse=True)
def _threads():
    # Tiny models: extra threads only add contention on a shared CI box.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def task():
    return get_task("digits")


class Data:
    """The digits split as trainer datasets."""

    def __init__(self, task) -> None:
        self.arrays = task.load(seed=0)
        self.train = task.dataset(self.arrays.x_train, self.arrays.y_train)
        self.test = task.dataset(self.arrays.x_test, self.arrays.y_test)
        self.small = task.dataset(self.arrays.x_train[:400], self.arrays.y_train[:400])
        self.x_test = torch.as_tensor(self.arrays.x_test)


@pytest.fixture(scope="module")
def data(task) -> Data:
    return Data(task)


@pytest.fixture
def trainer(task) -> LoraTrainer:
    return LoraTrainer(task.model_spec())


def _train(trainer: LoraTrainer, data, **kwargs) -> TrainResult:
    adapter = AdapterConfig(
        kwargs.pop("rank", 4),
        lora_alpha=kwargs.pop("lora_alpha", 8.0),
        use_rslora=kwargs.pop("use_rslora", False),
        adapter_type=kwargs.pop("adapter_type", "lora"),
    )
    args = {
        "incoming": {},
        "shared_parts": ALL_LORA,
        "train_data": data.small,
        "val_data": data.test,
        "settings": SETTINGS,
    }
    args.update(kwargs)
    return trainer.train(adapter, **args)


def _peft_shapes(trainer: LoraTrainer, rank: int, adapter_type: str = "lora") -> dict:
    from peft import get_peft_model_state_dict

    model = trainer.load_model(
        AdapterConfig(rank, lora_alpha=rank, adapter_type=adapter_type), incoming={}
    )
    return {k: tuple(v.shape) for k, v in get_peft_model_state_dict(model).items()}


def test_device_auto_picks_cuda_only_when_available(trainer):
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert trainer.device.type == expected
    assert resolve_device("cpu").type == "cpu"


def test_layout_matches_real_peft_state_dict(trainer):
    layout = trainer.layout()
    assert layout.modules == {"base_model.model.fc1": (64, 128), "base_model.model.fc2": (128, 128)}
    assert layout.extra == {
        "base_model.model.fc3.weight": (10, 128),
        "base_model.model.fc3.bias": (10,),
    }
    for rank in (1, 4, 16):
        assert layout.shapes(rank) == _peft_shapes(trainer, rank)
    assert layout.shapes(4, "vera") == _peft_shapes(trainer, 4, "vera")
    assert layout.to_dict()["modules"]["base_model.model.fc1"] == [64, 128]


def test_training_improves_accuracy_well_above_chance(trainer, task, data):
    before = trainer.evaluate(AdapterConfig(1), incoming={}, data=data.test)["accuracy"]
    result = _train(
        trainer, data, rank=8, lora_alpha=16.0, train_data=data.train,
        settings=SETTINGS.replace(epochs=3),
    )  # fmt: skip
    assert result.n_samples == len(data.train)
    assert result.metrics["val_accuracy"] > 0.75 > before + 0.4
    assert result.metrics["steps"] == 3 * int(np.ceil(len(data.train) / 16))
    assert {"train_loss", "val_loss", "train_seconds"} <= set(result.metrics)


@pytest.mark.parametrize("rank", [4, 16])
def test_update_holds_exactly_the_shared_parts(trainer, data, rank):
    result = _train(trainer, data, rank=rank, lora_alpha=2.0 * rank)
    tensors, meta = decode_update(result.update)
    assert {k: tuple(v.shape) for k, v in tensors.items()} == trainer.layout().shapes(rank)
    assert all(t.dtype == torch.float32 and t.is_contiguous() for t in tensors.values())
    assert meta["rank"] == str(rank) and meta["n_samples"] == "400"
    assert meta["parts"] == "extra,lora_A,lora_B" and meta["use_rslora"] == "false"
    assert result.private == {}  # RBLA shares every trainable part


def test_training_is_deterministic_for_a_seed(trainer, task, data):
    first = _train(trainer, data).update
    assert _train(trainer, data).update == first  # the same peft model, reloaded
    assert _train(LoraTrainer(task.model_spec()), data).update == first  # a new process
    assert _train(trainer, data, settings=SETTINGS.replace(seed=1)).update != first


def test_peft_model_is_built_once_and_rebuilt_only_for_another_adapter(trainer, data):
    for _ in range(3):
        result = _train(trainer, data)
    assert trainer.builds == 1
    incoming = decode_update(result.update)[0]
    _train(trainer, data, incoming=incoming)
    assert trainer.builds == 1
    rank8 = _train(trainer, data, rank=8, lora_alpha=16.0)
    assert trainer.builds == 2
    assert {k: tuple(v.shape) for k, v in decode_update(rank8.update)[0].items()} == (
        trainer.layout().shapes(8)
    )
    # Back at rank 4 after the rank-8 build: the base has its original layers again.
    assert _train(trainer, data).update == result.update
    assert trainer.builds == 3


def test_fedsa_keeps_b_and_head_private_and_they_reload_exactly(trainer, task, data, tmp_path):
    result = _train(trainer, data, shared_parts={"lora_A"})
    shared, _ = decode_update(result.update)
    assert shared and all(k.endswith(".lora_A.weight") for k in shared)
    assert set(result.private) == {
        "base_model.model.fc1.lora_B.weight",
        "base_model.model.fc2.lora_B.weight",
        "base_model.model.fc3.weight",
        "base_model.model.fc3.bias",
    }
    assert any(t.abs().sum() > 0 for k, t in result.private.items() if "lora_B" in k)

    # Persist, "restart": a new DeviceState and a new trainer with a freshly built base.
    DeviceState(tmp_path).save_private(result.private)
    private = DeviceState(tmp_path).load_private()
    fresh = LoraTrainer(task.model_spec())
    x = data.x_test
    with torch.no_grad():
        a = trainer.load_model(
            AdapterConfig(4, lora_alpha=8.0), incoming=shared, private=result.private
        )(inputs=x)
        b = fresh.load_model(AdapterConfig(4, lora_alpha=8.0), incoming=shared, private=private)(
            inputs=x
        )
    assert torch.equal(a, b)
    reloaded = fresh.evaluate(
        AdapterConfig(4, lora_alpha=8.0), incoming=shared, private=private, data=data.test
    )
    assert reloaded["loss"] == pytest.approx(result.metrics["val_loss"], abs=1e-6)

    # Next round: incoming A + private B/head continue training without complaint.
    _train(fresh, data, incoming=shared, private=private, shared_parts={"lora_A"})


def test_incoming_with_wrong_shape_or_unknown_key_is_rejected(trainer, data):
    rank16 = decode_update(_train(trainer, data, rank=16, lora_alpha=32.0).update)[0]
    with pytest.raises(ValueError, match="has shape .* expects"):
        _train(trainer, data, rank=4, incoming=rank16)
    with pytest.raises(ValueError, match="does not have"):
        _train(trainer, data, incoming={"base_model.model.fc9.lora_A.weight": torch.zeros(4, 64)})
    with pytest.raises(ValueError, match="private: .*has shape"):
        _train(trainer, data, private={"base_model.model.fc3.bias": torch.zeros(11)})
    with pytest.raises(ValueError, match="NaN"):
        _train(trainer, data, incoming={"base_model.model.fc3.bias": torch.full((10,), np.nan)})
    key = "base_model.model.fc3.bias"
    with pytest.raises(ValueError, match="both received and private"):
        _train(trainer, data, incoming={key: torch.zeros(10)}, private={key: torch.zeros(10)})


def test_bad_part_sets_are_rejected(trainer, data):
    with pytest.raises(ValueError, match="unknown part"):
        _train(trainer, data, shared_parts={"lora_C"})
    with pytest.raises(ValueError, match="do not exist for adapter_type='lora'"):
        _train(trainer, data, shared_parts={"vera_lambda_d"})
    with pytest.raises(ValueError, match="both shared and frozen"):
        _train(trainer, data, shared_parts={"lora_A"}, frozen_parts={"lora_A"})
    with pytest.raises(ValueError, match="empty"):
        _train(trainer, data, shared_parts=set())


def test_ffa_keeps_frozen_a_bit_identical(trainer, data, monkeypatch):
    gen = torch.Generator().manual_seed(123)
    layout = trainer.layout()
    a = {
        f"{m}.lora_A.weight": torch.randn(4, d_in, generator=gen) * 0.1
        for m, (d_in, _) in layout.modules.items()
    }
    seen = {}
    original_fit = trainer_module.fit

    def spy(model, *args, **kwargs):
        out = original_fit(model, *args, **kwargs)
        from peft import get_peft_model_state_dict

        seen.update({k: v.clone() for k, v in get_peft_model_state_dict(model).items()})
        return out

    monkeypatch.setattr(trainer_module, "fit", spy)
    result = _train(
        trainer, data, incoming=a, shared_parts={"lora_B", "extra"}, frozen_parts={"lora_A"}
    )
    for key, tensor in a.items():
        assert torch.equal(seen[key], tensor)
    update, _ = decode_update(result.update)
    assert not any("lora_A" in k for k in update) and result.private == {}
    assert any(v.abs().sum() > 0 for k, v in update.items() if "lora_B" in k)
    with pytest.raises(ValueError, match="frozen part"):
        _train(trainer, data, shared_parts={"lora_B"}, frozen_parts={"lora_A"})


def test_rslora_changes_the_scale_and_trains(trainer, data):
    trained = decode_update(_train(trainer, data, rank=16, lora_alpha=16.0).update)[0]
    x = data.x_test[:32]
    with torch.no_grad():
        plain = trainer.load_model(AdapterConfig(16, lora_alpha=16.0), incoming=trained)(inputs=x)
        rs = trainer.load_model(AdapterConfig(16, 16.0, use_rslora=True), incoming=trained)(
            inputs=x
        )
    assert not torch.allclose(plain, rs)  # scale alpha/sqrt(r) = 4 instead of alpha/r = 1
    result = _train(trainer, data, rank=16, lora_alpha=16.0, use_rslora=True)
    assert decode_update(result.update)[1]["use_rslora"] == "true"
    assert result.metrics["val_accuracy"] > 0.5


def test_fedsa_vera_shares_lambda_d_only_and_trains(trainer, data):
    result = _train(
        trainer, data, adapter_type="vera", rank=8, shared_parts={"vera_lambda_d"},
        settings=SETTINGS.replace(epochs=2),
    )  # fmt: skip
    update, meta = decode_update(result.update)
    assert meta["adapter_type"] == "vera"
    assert {k: tuple(v.shape) for k, v in update.items()} == {
        "base_model.model.fc1.vera_lambda_d": (8,),
        "base_model.model.fc2.vera_lambda_d": (8,),
    }
    assert not torch.allclose(update["base_model.model.fc1.vera_lambda_d"], torch.full((8,), 0.1))
    assert sorted(result.private) == [
        "base_model.model.fc1.vera_lambda_b",
        "base_model.model.fc2.vera_lambda_b",
        "base_model.model.fc3.bias",
        "base_model.model.fc3.weight",
    ]
    assert result.metrics["val_accuracy"] > 0.5


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_max_steps_and_other_optimizers(trainer, data, optimizer):
    settings = TrainSettings(
        epochs=None, max_steps=60, lr=0.02 if optimizer == "sgd" else 1e-2,
        batch_size=8, optimizer=optimizer, momentum=0.9 if optimizer == "sgd" else 0.0,
    )  # fmt: skip
    result = _train(trainer, data, settings=settings)
    assert result.metrics["steps"] == 60  # more than one pass over 400 samples at batch 8
    assert result.metrics["val_accuracy"] > 0.3


def test_base_losses_are_the_untrained_models_and_match_evaluate(task, data):
    trainer = LoraTrainer(task.model_spec())
    losses = trainer.base_losses(data.test)
    assert losses.shape == (len(data.test),) and losses.dtype == np.float64
    assert (losses >= 0).all()
    # Every B is zero before round 1: the base's losses are the rank-1 adapter's with nothing
    # loaded, and they stay the base's once a trained peft model exists.
    metrics = trainer.evaluate(AdapterConfig(1), incoming={}, data=data.test)
    assert metrics["loss"] == pytest.approx(losses.mean(), rel=1e-5)
    assert metrics["n_samples"] == len(data.test)
    _train(trainer, data)
    assert np.allclose(trainer.base_losses(data.test), losses, rtol=1e-5)


def test_gradient_accumulation_equals_one_big_batch(task, data):
    """Two accumulated batches of 8 make the step one batch of 16 makes (plain SGD)."""
    sgd = TrainSettings(epochs=None, max_steps=5, lr=0.1, batch_size=16, optimizer="sgd")
    accumulated = sgd.replace(batch_size=8, gradient_accumulation_steps=2)
    one = decode_update(_train(LoraTrainer(task.model_spec()), data, settings=sgd).update)[0]
    two = decode_update(_train(LoraTrainer(task.model_spec()), data, settings=accumulated).update)[
        0
    ]
    one_step = sgd.replace(max_steps=1)
    moved = decode_update(_train(LoraTrainer(task.model_spec()), data, settings=one_step).update)[0]
    for key in one:
        assert torch.allclose(one[key], two[key], atol=1e-5), key
    assert any(not torch.allclose(one[k], moved[k]) for k in one)


def test_trainer_takes_a_base_module_or_factory(task, data):
    spec = task.model_spec()
    from client_sdk.models import build_base

    handed = LoraTrainer(spec, model=build_base(spec))
    by_factory = LoraTrainer(spec, model=lambda: build_base(spec))
    assert handed.layout() == by_factory.layout() == LoraTrainer(spec).layout()
    assert handed.model_sha256 is None  # nothing says which model a bare module is
    assert LoraTrainer(spec).model_sha256 == LoraTrainer(spec).location.config_sha256
    with pytest.raises(TypeError, match="not an nn.Module"):
        LoraTrainer(spec, model=lambda: "nope").layout()


def _dirichlet_split(y: np.ndarray, clients: int, alpha: float, seed: int) -> list[np.ndarray]:
    """Per class, Dir(alpha) proportions over clients; redraw until each has >= 20 samples."""
    rng = np.random.default_rng(seed)
    while True:
        parts: list[list[int]] = [[] for _ in range(clients)]
        for c in np.unique(y):
            idx = rng.permutation(np.flatnonzero(y == c))
            cuts = (np.cumsum(rng.dirichlet(np.full(clients, alpha)))[:-1] * len(idx)).astype(int)
            for k, chunk in enumerate(np.split(idx, cuts)):
                parts[k].extend(chunk.tolist())
        if min(len(p) for p in parts) >= 20:
            return [np.array(sorted(p)) for p in parts]


def test_federated_fedavg_sanity_without_a_server(task, data):
    """4 clients, Dirichlet(0.5), 5 rounds of FedAvg over A, B and head at r=8: > 0.6."""
    trainer = LoraTrainer(task.model_spec())
    splits = _dirichlet_split(data.arrays.y_train, clients=4, alpha=0.5, seed=0)
    # Round 0: one shared initial adapter (A random, B = 0), as a server does.
    init = trainer.load_model(AdapterConfig(8, lora_alpha=16.0), incoming={})
    from peft import get_peft_model_state_dict

    global_sd = {k: v.detach().clone() for k, v in get_peft_model_state_dict(init).items()}
    accuracies = []
    for rnd in range(5):
        updates, weights = [], []
        for k, idx in enumerate(splits):
            result = trainer.train(
                AdapterConfig(8, lora_alpha=16.0), incoming=global_sd, shared_parts=ALL_LORA,
                train_data=task.dataset(data.arrays.x_train[idx], data.arrays.y_train[idx]),
                settings=SETTINGS.replace(seed=1000 * rnd + k),
            )  # fmt: skip
            updates.append(decode_update(result.update)[0])
            weights.append(result.n_samples)
        p = np.asarray(weights, dtype=np.float64) / sum(weights)
        global_sd = {
            key: sum(float(pk) * u[key] for pk, u in zip(p, updates, strict=True))
            for key in updates[0]
        }
        accuracies.append(
            trainer.evaluate(AdapterConfig(8, lora_alpha=16.0), incoming=global_sd, data=data.test)[
                "accuracy"
            ]
        )
    print("FL sanity accuracy per round:", [round(a, 3) for a in accuracies])
    assert accuracies[-1] > 0.6
    assert accuracies[-1] > accuracies[0] - 0.05


@pytest.mark.parametrize(
    "bad",
    [
        {"epochs": 0},
        {"epochs": None, "max_steps": None},
        {"epochs": None, "max_steps": 0},
        {"epochs": True},
        {"epochs": 1.5},
        {"lr": 0},
        {"lr": -1e-3},
        {"lr": float("nan")},
        {"lr": float("inf")},
        {"batch_size": 0},
        {"optimizer": "rmsprop"},
        {"momentum": 1.0},
        {"weight_decay": -0.1},
        {"max_grad_norm": 0},
        {"learning_rate": 1e-3},  # unknown key: a typo must not fall back to the default
    ],
)
def test_train_settings_reject_bad_values(bad):
    with pytest.raises(ValueError):
        TrainSettings.from_dict({"lr": 1e-2, **bad})


def test_train_settings_round_trip_and_max_steps_priority():
    settings = TrainSettings.from_dict({"epochs": 2, "max_steps": 5, "optimizer": "sgd"})
    assert TrainSettings.from_dict(settings.to_dict()) == settings
    assert settings.replace(lr=0.5).lr == 0.5
    with pytest.raises(ValueError):
        settings.replace(batch_size=-1)


def test_divergence_is_reported_not_uploaded(trainer, data):
    with pytest.raises(FloatingPointError, match="diverged"):
        _train(trainer, data, settings=SETTINGS.replace(optimizer="sgd", lr=1e6))
