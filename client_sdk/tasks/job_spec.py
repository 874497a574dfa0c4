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
) -> dict[str, Any]:
    """A job spec for the registered task ``task_name``: its model (the coordinator derives the
    shapes), AutoRank (fixed rank for the equal-rank baselines), LoRA scale 2 at every rank, and
    the task's local settings."""
    # The simulation keeps the list of equal-rank strategies until strategies answer for it.
    from client_sdk.simulate import EQUAL_RANK_STRATEGIES

    task = get_task(task_name)
    settings = task.default_settings
    fixed = strategy in EQUAL_RANK_STRATEGIES
    return {
        "name": f"{task_name}-{strategy}",
        "model": task.model_spec().model_dump(exclude_none=True),
        "strategy": strategy,
        "rank": {
            "policy": "fixed" if fixed else "autorank",
            "r_min": r_min,
            "r_max": r_max,
            **({"default_rank": r_max // 2} if fixed else {}),
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
