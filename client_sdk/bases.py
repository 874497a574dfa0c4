"""Pretrained bases of the built-in vision models, built deterministically and cached.

A built-in config with a ``pretrain`` recipe (client_sdk.model_spec.PRETRAIN_RECIPE) names a
base that every party builds the same way, offline, from data it already has:

1. the dataset's **public split** (client_sdk.tasks.vision.split_indices: 16 % of the dataset,
   stratified, in no client's pool and not in the test set);
2. its labels **swapped in pairs** (0<->1, 2<->3, ...), so the hidden layers learn useful
   features but the trained head does not already answer the federated task;
3. the MLP drawn from the recipe's ``seed`` and trained on it for ``epochs`` epochs (Adam,
   batches drawn by a seeded generator, one CPU thread, deterministic algorithms);
4. the head (fc3) **replaced** by a fresh one drawn from ``head_seed``: adapting the base to
   the task is the federation's job.

The result is cached as safetensors in ``$FLAAS_CACHE_DIR/bases/<sha>-torch<version>.safetensors``
(default ``~/.flaas/cache``), where ``sha`` covers everything that determines the weights: the
config (architecture and recipe) and the bytes of the public split. The file is written to a
temporary file and moved into place (``os.replace``), so two processes building at once both
write a complete file and a reader never sees a partial one; a file that does not read back
(truncated, corrupted: its metadata holds the tensors' SHA-256) is rebuilt.

**Bit-identity holds within one CPU instruction set and one torch version** (the torch version
is in the file name): another ISA or another torch may round a step differently and end a few
ulps away. The model's identity (its config's SHA-256) is the recipe, not the weights, so such
devices still enrol in the same job; their bases differ by float rounding only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from client_sdk.tasks.base import MLP, seeded_init
from client_sdk.wire_format import decode_update, encode_update

#: Bump when the build procedure changes in a way the recipe does not name.
BUILD_VERSION = 1
#: Class c is trained as SWAPPED_LABELS[c] (the fixed five-pair permutation).
SWAPPED_LABELS = (1, 0, 3, 2, 5, 4, 7, 6, 9, 8)


@dataclass(frozen=True)
class PretrainedBase:
    """A pretrained base's weights, where they are cached, and whether this call trained them."""

    state: dict[str, torch.Tensor]
    path: Path
    built: bool


def cache_dir() -> Path:
    """``$FLAAS_CACHE_DIR`` (default ``~/.flaas/cache``), beside ``~/.flaas/state``."""
    return Path(os.environ.get("FLAAS_CACHE_DIR") or Path.home() / ".flaas" / "cache").expanduser()


def pretrained_base(
    config: Mapping[str, Any], *, epochs: int | None = None, cache: Path | None = None
) -> PretrainedBase:
    """The weights of the built-in base ``config`` (one with a ``pretrain`` recipe), read from
    the cache or built (and cached) when the cache has no sound copy.

    ``epochs`` overrides the recipe's (a short build for tests); it is part of the cache key.
    """
    recipe = dict(config["pretrain"])
    if epochs is not None:
        recipe["epochs"] = epochs
    config = {**config, "pretrain": recipe}
    x, y = _public_data(str(recipe["dataset"]))
    name = f"{_cache_key(config, x, y)}-torch{_torch()}.safetensors"
    path = (cache or cache_dir()) / "bases" / name
    state = _read(path, _shapes(config))
    if state is not None:
        return PretrainedBase(state, path, built=False)
    state = build(config, x, y)
    _write(path, state)
    return PretrainedBase(state, path, built=True)


def build(config: Mapping[str, Any], x: np.ndarray, y: np.ndarray) -> dict[str, torch.Tensor]:
    """Pretrain the MLP of ``config`` on ``(x, y)`` by its recipe; its state dict (CPU)."""
    recipe = config["pretrain"]
    if recipe["relabel"] != "swap-pairs" or recipe["optimizer"] != "adam":
        raise ValueError(f"unsupported pretraining recipe {dict(recipe)}")
    d_in, hidden, classes = int(config["d_in"]), int(config["hidden"]), int(config["num_labels"])
    inputs = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    labels = torch.tensor(SWAPPED_LABELS, dtype=torch.int64)[torch.from_numpy(y)]
    batch = int(recipe["batch_size"])
    with _deterministic():
        model = seeded_init(lambda: MLP(d_in, hidden, classes), int(recipe["seed"]))
        optimizer = torch.optim.Adam(model.parameters(), lr=float(recipe["lr"]))
        order = torch.Generator().manual_seed(int(recipe["seed"]))
        model.train()
        for _ in range(int(recipe["epochs"])):
            for idx in torch.split(torch.randperm(len(labels), generator=order), batch):
                optimizer.zero_grad(set_to_none=True)
                torch.autograd.backward(F.cross_entropy(model(inputs[idx]), labels[idx]))
                optimizer.step()
        model.fc3 = seeded_init(lambda: nn.Linear(hidden, classes), int(recipe["head_seed"]))
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


@contextlib.contextmanager
def _deterministic() -> Iterator[None]:
    # One thread: a GEMM's reduction order can depend on how many threads share it. Both
    # switches are process-wide; the caller (client_sdk.models) holds BUILD_LOCK meanwhile.
    threads = torch.get_num_threads()
    strict = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(strict)
        torch.set_num_threads(threads)


def _public_data(dataset: str) -> tuple[np.ndarray, np.ndarray]:
    from client_sdk.tasks.vision import public_split

    return public_split(dataset)


def _cache_key(config: Mapping[str, Any], x: np.ndarray, y: np.ndarray) -> str:
    digest = hashlib.sha256()
    described = {"build": BUILD_VERSION, "config": config, "x": list(x.shape), "y": list(y.shape)}
    digest.update(json.dumps(described, sort_keys=True, separators=(",", ":")).encode())
    digest.update(np.ascontiguousarray(x, dtype="<f4").tobytes())
    digest.update(np.ascontiguousarray(y, dtype="<i8").tobytes())
    return digest.hexdigest()[:32]


def _torch() -> str:
    return torch.__version__.replace("/", "_")


def _shapes(config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    d_in, hidden, classes = int(config["d_in"]), int(config["hidden"]), int(config["num_labels"])
    dims = {"fc1": (hidden, d_in), "fc2": (hidden, hidden), "fc3": (classes, hidden)}
    shapes: dict[str, tuple[int, ...]] = {}
    for name, (out, inp) in dims.items():
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (out, inp), (out,)
    return shapes


def _digest(state: Mapping[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode() + b"\0")
        digest.update(state[key].to(torch.float32).contiguous().numpy().astype("<f4").tobytes())
    return digest.hexdigest()


def _read(path: Path, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, torch.Tensor] | None:
    """The cached state, or None when there is none or it is not sound (then it is rebuilt)."""
    try:
        state, metadata = decode_update(path.read_bytes())
    except FileNotFoundError:
        return None
    except Exception:  # noqa: BLE001 - a truncated or garbled file of any kind: rebuild it
        return None
    if {k: tuple(v.shape) for k, v in state.items()} != dict(shapes):
        return None
    if metadata.get("sha256") != _digest(state):
        return None
    return state


def _write(path: Path, state: Mapping[str, torch.Tensor]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = encode_update(state, {"sha256": _digest(state), "format": "flaas-base"})
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temp, 0o644)  # mkstemp's 0600 would hide the cache from other users' builds
        os.replace(temp, path)  # atomic: readers see the old file or the whole new one
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
