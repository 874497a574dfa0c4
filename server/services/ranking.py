"""Rank assignment for a job's clients: AutoRank over the cohort, or the fixed default."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from server.autorank import assign_ranks, score_late_joiner
from server.db.models import Client, Job
from server.schemas.job_spec import JobSpec

CRITERIA = ("n_samples", "label_entropy", "gini_simpson", "loss_entropy")


def _stored_row(client: Client) -> list[float | None]:
    """The client's criteria as stored in JSON (None where missing: JSON has no NaN)."""
    return [None if client.stats.get(c) is None else float(client.stats[c]) for c in CRITERIA]


def _matrix(rows: Sequence[Sequence[float | None]]) -> np.ndarray:
    return np.array([[math.nan if v is None else v for v in row] for row in rows], dtype=np.float64)


def _json_safe(value: object) -> object:
    """Replace NaN/inf by None, recursively (Postgres JSONB refuses NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _cap(rank: int, client: Client) -> int:
    return min(rank, client.max_rank) if client.max_rank else rank


def rank_cohort(job: Job, spec: JobSpec, clients: Sequence[Client]) -> None:
    """Assign every client's rank when enrolment closes, and record AutoRank's evidence."""
    policy = spec.rank
    if policy.policy == "fixed" or not clients:
        for client in clients:
            client.rank = _cap(policy.default, client)
        job.autorank = {"policy": policy.policy, "criteria": list(CRITERIA)}
        return
    rows = [_stored_row(c) for c in clients]
    result = assign_ranks(
        _matrix(rows), policy.r_min, policy.r_max, grid=policy.grid, default=policy.default
    )
    for client, rank, closeness in zip(clients, result.ranks, result.closeness, strict=True):
        client.rank = _cap(int(rank), client)
        client.closeness = float(closeness)
    job.autorank = {
        "policy": "autorank",
        "criteria": list(CRITERIA),
        "matrix": rows,
        "result": _json_safe(result.as_dict()),
    }


def rank_late_joiner(job: Job, spec: JobSpec, client: Client) -> None:
    """Score a client that enrols after the start against the stored cohort (others unchanged)."""
    policy = spec.rank
    cohort = (job.autorank or {}).get("matrix")
    if policy.policy == "fixed" or not cohort:
        client.rank = _cap(policy.default, client)
        return
    closeness, rank = score_late_joiner(
        _matrix(cohort),
        _matrix([_stored_row(client)])[0],
        policy.r_min,
        policy.r_max,
        grid=policy.grid,
        default=policy.default,
    )
    client.rank = _cap(int(rank), client)
    client.closeness = float(closeness)
