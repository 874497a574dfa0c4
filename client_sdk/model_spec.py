"""A job's model as data: what to load, how peft adapts it, and how to tell it is the same model.

Torch-free (pydantic and the standard library only), so the coordinator validates a job's
``model`` section and a device checks its ``--model`` argument in well under a second, before
anything heavy is imported.

A model is one of:

* a **Hugging Face model**: a local directory holding ``config.json`` (what
  ``save_pretrained`` writes), or a hub id such as ``Qwen/Qwen2.5-0.5B`` found in the local
  Hugging Face cache (nothing is downloaded: fetch it first with ``huggingface-cli download``);
* a **built-in demo model** (:data:`BUILTIN_CONFIGS`: ``flaas:digits``, ``flaas:mnist``, their
  ``-random`` twins and ``flaas:mnist-rbla``): a small MLP whose "config" is a dictionary here.
  A config with a ``pretrain`` recipe names a base pretrained on its dataset's public split and
  cached (client_sdk.bases); one without it is a frozen random base drawn from
  :data:`BUILTIN_INIT_SEED`.

Its identity is the SHA-256 of its config, canonicalised (sorted keys, without the fields that
name where or with which library version it was saved), so two copies of one model in different
folders, or saved by different transformers versions, are the same model, and a model with one
layer more is not.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

BUILTIN_PREFIX = "flaas:"
ALL_LINEAR = "all-linear"
TaskType = Literal["CAUSAL_LM", "SEQ_CLS"]

#: How a built-in base is pretrained (client_sdk.bases): on the dataset's public split, with
#: labels swapped in pairs (0<->1, 2<->3, ...: the features are useful, the head is not the
#: answer), then the head is replaced by a fresh one drawn from ``head_seed``. Part of the
#: config, so part of the model's identity.
PRETRAIN_RECIPE: dict[str, Any] = {
    "split": "public-16%",
    "relabel": "swap-pairs",
    "epochs": 10,
    "optimizer": "adam",
    "lr": 1e-3,
    "batch_size": 32,
    "seed": 0,
    "head_seed": 0,
}


def _mlp(d_in: int, hidden: int, pretrain_on: str | None = None) -> dict[str, Any]:
    config: dict[str, Any] = {
        "model_type": "flaas-mlp", "d_in": d_in, "hidden": hidden, "num_labels": 10
    }  # fmt: skip
    if pretrain_on is not None:
        config["pretrain"] = {"dataset": pretrain_on, **PRETRAIN_RECIPE}
    return config


#: The built-in demo models, the one list of them: an MLP ``d_in -> hidden -> hidden ->
#: num_labels`` (fc1, fc2, fc3). The random bases keep the configs (and so the identities) the
#: built-in models had before the pretrained bases.
BUILTIN_CONFIGS: dict[str, dict[str, Any]] = {
    "digits": _mlp(64, 128, pretrain_on="digits"),
    "digits-random": _mlp(64, 128),
    "mnist": _mlp(784, 128, pretrain_on="mnist"),
    "mnist-random": _mlp(784, 128),
    "mnist-rbla": _mlp(784, 200),  # the RBLA paper's MLP 784-200-200-10
}
#: ``flaas:digits, flaas:digits-random, ...``: for help texts and error messages.
BUILTIN_SOURCES = ", ".join(BUILTIN_PREFIX + name for name in BUILTIN_CONFIGS)
#: Seed of every built-in model's frozen base: every device and the coordinator build the same.
BUILTIN_INIT_SEED = 0

# Config fields that say where or how a model was saved, not what it is.
_VOLATILE_CONFIG_KEYS = frozenset(
    {"_name_or_path", "_commit_hash", "transformers_version", "torch_dtype", "dtype"}
)


class ModelNotFound(ValueError):
    """The model named by a spec or a ``--model`` argument is not where it was looked for."""


#: A path or a hub id never holds one (and a NUL byte is an error in any path call).
NO_CONTROL_CHARACTERS = r"^[^\x00-\x1f\x7f]+$"


class ModelSpec(BaseModel):
    """The ``model`` section of a job spec: which model, its task, and what LoRA adapts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = Field(
        min_length=1,
        max_length=500,
        pattern=NO_CONTROL_CHARACTERS,
        description="A local directory with config.json, a Hugging Face model id in the local "
        f"cache, or a built-in demo model ({BUILTIN_SOURCES}).",
    )
    revision: str | None = Field(
        default=None,
        max_length=200,
        pattern=NO_CONTROL_CHARACTERS,
        description="Hub revision (branch, tag or commit).",
    )
    task_type: TaskType = Field(
        default="CAUSAL_LM",
        description="peft task type: CAUSAL_LM (next-token loss, prompt masked) or SEQ_CLS "
        "(cross-entropy over num_labels classes). Built-in models are SEQ_CLS.",
    )
    num_labels: int | None = Field(
        default=None, ge=2, le=100_000, description="Classes of a SEQ_CLS model (its head size)."
    )
    label_names: list[str] | None = Field(
        default=None,
        max_length=100_000,
        description="Class names of a SEQ_CLS model, in index order: devices' data files may "
        "label samples by name, and an exported adapter's config carries them.",
    )
    target_modules: list[str] | str = Field(
        default=ALL_LINEAR,
        description='Modules LoRA adapts, as peft takes them: names (["q_proj", "v_proj"]), '
        'one regular expression matched against full module names, or "all-linear".',
    )
    modules_to_save: list[str] = Field(
        default_factory=list,
        max_length=100,
        description="Modules trained in full and shared like LoRA factors (e.g. a new head). "
        "peft adds a SEQ_CLS model's classifier itself.",
    )
    lora_dropout: float = Field(default=0.0, ge=0, lt=1)
    config_sha256: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description="SHA-256 of the model's canonical config. Filled in by the coordinator "
        "when the job is created (give it to pin the model); devices must match it to enrol.",
    )

    @field_validator("target_modules")
    @classmethod
    def _targets(cls, value: list[str] | str) -> list[str] | str:
        if isinstance(value, list):
            if not value or len(value) > 200:
                raise ValueError("target_modules must name 1 to 200 modules")
            if any(not name or len(name) > 200 for name in value):
                raise ValueError("target_modules names must be 1 to 200 characters")
        elif not value or len(value) > 500:
            raise ValueError("a target_modules pattern must be 1 to 500 characters")
        return value

    @model_validator(mode="after")
    def _builtin(self) -> ModelSpec:
        if self.is_builtin:
            name = self.source.removeprefix(BUILTIN_PREFIX)
            if name not in BUILTIN_CONFIGS:
                raise ValueError(
                    f"unknown built-in model {self.source!r}; built-in models: {BUILTIN_SOURCES}"
                )
            if self.task_type != "SEQ_CLS":
                raise ValueError(f"{self.source} is a classifier: task_type must be SEQ_CLS")
        elif self.task_type == "SEQ_CLS" and self.num_labels is None:
            raise ValueError("a SEQ_CLS model needs num_labels (the size of its new head)")
        if self.label_names is not None:
            classes = self.num_labels or BUILTIN_CONFIGS.get(
                self.source.removeprefix(BUILTIN_PREFIX), {}
            ).get("num_labels")
            if self.task_type != "SEQ_CLS" or len(self.label_names) != classes:
                raise ValueError(f"label_names must name each of the {classes} classes once")
            if len(set(self.label_names)) != len(self.label_names):
                raise ValueError("label_names must be distinct")
        return self

    @property
    def is_builtin(self) -> bool:
        return self.source.startswith(BUILTIN_PREFIX)


@dataclass(frozen=True)
class ModelLocation:
    """Where a model was found: a directory with ``config.json``, or a built-in's name."""

    spec_source: str
    path: Path | None
    builtin: str | None
    config: dict[str, Any]

    @property
    def config_sha256(self) -> str:
        return config_sha256(self.config)

    @property
    def num_labels(self) -> int | None:
        value = self.config.get("num_labels")
        return int(value) if isinstance(value, int) else None


def config_sha256(config: Mapping[str, Any]) -> str:
    """SHA-256 of a model config, canonical: sorted keys, without save-time fields."""
    canonical = {k: v for k, v in config.items() if k not in _VOLATILE_CONFIG_KEYS}
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache this process reads (``HF_HUB_CACHE``, ``HF_HOME``)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = (
        os.environ.get("HF_HOME")
        or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "huggingface"
    )
    return Path(home).expanduser() / "hub"


def locate_model(source: str, revision: str | None = None) -> ModelLocation:
    """Find ``source`` (built-in, local directory or cached hub id) and read its config.

    Raises :class:`ModelNotFound` saying every place it looked.
    """
    if source.startswith(BUILTIN_PREFIX):
        name = source.removeprefix(BUILTIN_PREFIX)
        if name not in BUILTIN_CONFIGS:
            raise ModelNotFound(
                f"unknown built-in model {source!r}; built-in models: {BUILTIN_SOURCES}"
            )
        return ModelLocation(source, None, name, copy.deepcopy(BUILTIN_CONFIGS[name]))
    path = Path(source).expanduser()
    if path.is_dir():
        return _read_dir(source, path)
    if path.exists():
        raise ModelNotFound(f"{source} is a file; a model is a directory holding config.json")
    looked = [f"no directory {path.resolve()}"]
    cached = _cached_snapshot(source, revision)
    if cached is not None:
        return _read_dir(source, cached)
    at = f" at revision {revision}" if revision else ""
    looked.append(f"not in the Hugging Face cache {hf_cache_dir()}{at}")
    raise ModelNotFound(
        f"model {source!r} not found: {'; '.join(looked)}. Give a directory written by "
        "save_pretrained, or download the model into the cache first "
        "(huggingface-cli download ID); nothing is downloaded at run time"
    )


def _read_dir(source: str, path: Path) -> ModelLocation:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelNotFound(f"{path} holds no config.json: is it a saved transformers model?")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelNotFound(f"{config_file} is not readable JSON: {exc}") from None
    if not isinstance(config, dict):
        raise ModelNotFound(f"{config_file} does not hold a JSON object")
    return ModelLocation(source, path, None, config)


def _cached_snapshot(repo_id: str, revision: str | None) -> Path | None:
    """The cached snapshot folder of a hub model, read from the cache's documented layout."""
    if repo_id.count("/") > 1 or repo_id.startswith((".", "/", "~")):
        return None
    repo = hf_cache_dir() / f"models--{repo_id.replace('/', '--')}"
    ref = revision or "main"
    ref_file = repo / "refs" / ref
    commit = ref_file.read_text().strip() if ref_file.is_file() else ref
    snapshot = repo / "snapshots" / commit
    return snapshot if (snapshot / "config.json").is_file() else None
