"""Tasks by name: the data and model a simulated cohort or the demo federates.

``get_task("digits")`` returns a new :class:`Task`, for the built-in tasks and for any that user
code adds with :func:`register_task`. The built-in tasks' data ships inside installed packages
(nothing is downloaded at run time), and their modules are imported only when asked for, so
using ``digits`` never imports transformers.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from client_sdk.tasks.base import MLP, Task, TaskData

__all__ = ["MLP", "Task", "TaskData", "available_tasks", "get_task", "register_task"]

_REGISTRY: dict[str, Callable[[], Task]] = {}


def register_task(name: str, factory: Callable[[], Task]) -> None:
    """Make ``get_task(name)`` return ``factory()``: a Task subclass, or any function making one.

    ValueError when ``name`` is empty or already taken (a built-in task's name included).
    """
    if not name:
        raise ValueError("a task needs a non-empty name")
    if name in _REGISTRY:
        raise ValueError(f"a task named {name!r} is already registered")
    _REGISTRY[name] = factory


def available_tasks() -> list[str]:
    """Names of the registered tasks (built-in ones whether their data packages are installed
    or not)."""
    return sorted(_REGISTRY)


def get_task(name: str) -> Task:
    """A new instance of the task registered as ``name``; ValueError for an unknown name."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown task {name!r}; available: {available_tasks()} (register_task adds one)"
        ) from None
    task = factory()
    if not isinstance(task, Task):
        raise TypeError(f"task {name!r}: its factory returned a {type(task).__name__}, not a Task")
    return task


def _builtin(module: str, class_name: str) -> Callable[[], Task]:
    """A factory for a built-in task class that imports its module only when it is called."""

    def make() -> Task:
        task_class: type[Task] = getattr(
            importlib.import_module(f"client_sdk.tasks.{module}"), class_name
        )
        return task_class()

    return make


def _register_builtins() -> None:
    """Register the built-in tasks, each through its lazy factory."""
    for name, module, class_name in (
        ("digits", "vision", "DigitsTask"),
        ("digits-random", "vision", "RandomDigitsTask"),
        ("mnist", "vision", "MnistTask"),
        ("mnist-random", "vision", "RandomMnistTask"),
        ("mnist-rbla", "vision", "RblaMnistTask"),
        ("trec", "trec", "TrecTask"),
    ):
        register_task(name, _builtin(module, class_name))


_register_builtins()
