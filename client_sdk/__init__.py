"""flaas client SDK: talks to a coordinator and trains LoRA adapters on the device.

Three names cover the common case::

    from client_sdk import Client, LoraTrainer, profile

* :class:`Client` joins a job and runs its rounds (torch-free; resumable after a crash).
* :class:`LoraTrainer` trains peft LoRA / rsLoRA / VeRA adapters of the model a job names (a
  Hugging Face causal LM or classifier, or a built-in demo MLP; needs the ``train`` extra,
  imported lazily so the base install works without torch).
* :func:`profile` computes the AutoRank data-complexity statistics of local data.

Training with one's own code instead, ``Client.run(train_fn)`` calls ``train_fn`` with a
:class:`RoundContext` (the round's task, the adapter sent, the tensors kept on the device) and
takes back a :class:`LocalUpdate`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Eager, and it must stay so: a lazy `profile` would be shadowed by the submodule of the same
# name as soon as anything imports client_sdk.profile.
from client_sdk.profile import profile
from client_sdk.rounds import LocalUpdate, RoundContext

if TYPE_CHECKING:
    from client_sdk.client import Client
    from client_sdk.trainer import LoraTrainer

__all__ = ["Client", "LocalUpdate", "LoraTrainer", "RoundContext", "profile"]

# PEP 562 lazy attributes: LoraTrainer pulls in torch and peft (the train extra), and Client
# (httpx) is left out of `flaas --help` and the CLI's startup.
_LAZY = {"Client": "client_sdk.client", "LoraTrainer": "client_sdk.trainer"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'client_sdk' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
