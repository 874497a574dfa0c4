"""Built-in tasks whose data ships inside installed packages (nothing is downloaded at run time).

``get_task("digits")`` returns a :class:`Task`; task modules are imported only when asked for,
so using ``digits`` never imports transformers.
"""

from __future__ import annotations

import importlib

from client_sdk.tasks.base import MLP, Task, TaskData

__all__ = ["MLP", "Task", "TaskData", "available_tasks", "get_task"]

# name -> (module, class); imported lazily.
_REGISTRY: dict[str, tuple[str, str]] = {
    "digits": ("client_sdk.tasks.vision", "DigitsTask"),
    "digits-random": ("client_sdk.tasks.vision", "RandomDigitsTask"),
    "mnist": ("client_sdk.tasks.vision", "MnistTask"),
    "mnist-random": ("client_sdk.tasks.vision", "RandomMnistTask"),
    "mnist-rbla": ("client_sdk.tasks.vision", "RblaMnistTask"),
    "trec": ("client_sdk.tasks.trec", "TrecTask"),
}


def available_tasks() -> list[str]:
    """Names of the built-in tasks (whether their optional data packages are installed or not)."""
    return sorted(_REGISTRY)


def get_task(name: str) -> Task:
    """A new instance of the built-in task ``name``; ValueError for an unknown name."""
    try:
        module_name, class_name = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; available: {available_tasks()}") from None
    task_class = getattr(importlib.import_module(module_name), class_name)
    task: Task = task_class()
    return task
