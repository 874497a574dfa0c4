"""The job spec a task is run with by a simulated cohort or the demo.

Its model (the coordinator derives the shapes), rank policy, LoRA scale and local settings,
from the task's own defaults: what ``flaas demo`` creates, and what a test or a benchmark posts
to a coordinator before it runs the task's clients.
"""

from __future__ import annotations

from typing import Any

from client_sdk.tasks import get_task


def task_job_spec(
    task_name: str = "digits",
    *,
    strategy: str = "rbla-shrink",
    clients: int = 8,
    rounds: int = 5,
    r_min: int = 2,
    r_max: int = 16,
    seed: int = 0,
    round_timeout_s: float = 300.0,
    equal_ranks: bool = False,
) -> dict[str, Any]:
    """A job spec for the registered task ``task_name``: its model (the coordinator derives the
    shapes), AutoRank (a fixed rank when ``equal_ranks``: the strategy needs every client at one
    rank, which the coordinator's strategy answers, ``Strategy.equal_ranks``, and its 422 says),
    LoRA scale 2 at every rank, and the task's local settings."""
    task = get_task(task_name)
    settings = task.default_settings
    return {
        "name": f"{task_name}-{strategy}",
        "model": task.model_spec().model_dump(exclude_none=True),
        "strategy": strategy,
        "rank": {
            "policy": "fixed" if equal_ranks else "autorank",
            "r_min": r_min,
            "r_max": r_max,
            **({"default_rank": r_max // 2} if equal_ranks else {}),
        },
        # Scale alpha / r = 2 at every rank, the measured digits setup.
        "lora": {"lora_alpha": 2.0, "alpha_per_rank": True},
        "rounds": rounds,
        "enrolment": {"min_clients": clients, "target_clients": clients, "timeout_s": 600},
        "round": {"timeout_s": round_timeout_s},
        "training": {
            "epochs": settings.get("epochs", 1),
            "lr": settings["lr"],
            "batch_size": settings["batch_size"],
            "optimizer": settings["optimizer"],
        },
        "seed": seed,
    }
