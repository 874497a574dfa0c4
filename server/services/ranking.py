"""Rank assignment for a job's clients: AutoRank over the cohort, or the fixed default."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from server.autorank import (
    AutoRankError,
    Bound,
    RankBudget,
    assign_ranks,
    criterion_bounds,
    mean_rank_budget,
    score_late_joiner,
    upload_budget,
)
from server.db.models import Client, Job
from server.errors import InvalidRequest
from server.schemas.job_spec import JobSpec, RankPolicy
from server.services.strategies import sample_size, upload_bytes

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


def reference_of(policy: RankPolicy) -> list[Bound] | None:
    """The TOPSIS reference a policy asks for: the criteria's bounds, or None (the cohort)."""
    if policy.reference == "cohort":
        return None
    return criterion_bounds(CRITERIA, policy.reference_samples)


def _job_reference(job: Job, policy: RankPolicy) -> list[Bound] | None:
    """The job's reference. A stored spec without ``rank.reference`` was created before the
    option existed (creation stores every field): it keeps the cohort reference it was
    created under, so the same spec and seed still give the same ranks."""
    if "reference" not in (job.spec or {}).get("rank", {}):
        return None
    return reference_of(policy)


def _budget(spec: JobSpec, clients: Sequence[Client]) -> RankBudget | None:
    """The spec's budget over this cohort (each device's own max_rank counted as its cap)."""
    budget = spec.rank.budget
    if budget is None:
        return None
    caps = [c.max_rank for c in clients]
    if budget.mean_rank is not None:
        return mean_rank_budget(budget.mean_rank, caps)
    assert budget.upload_bytes_per_round is not None  # the schema allows exactly one
    sizes: dict[int, int] = {}

    def bytes_at(rank: int) -> int:
        if rank not in sizes:
            sizes[rank] = upload_bytes(spec, rank)
        return sizes[rank]

    return upload_budget(
        budget.upload_bytes_per_round, bytes_at, sample_size(spec, len(clients)), caps
    )


def check_budget(spec: JobSpec, *, max_clients: int) -> None:
    """Refuse, at job creation, an upload budget that no cohort the job can start with meets.

    A round's worst-case upload grows with the cohort, so: if min_clients clients all at r_min
    already exceed it, no cohort fits; if the largest cohort enrolment can start with
    (target_clients, else this coordinator's limit) all at r_max stays below it, the budget
    can never be spent. Between the two it depends on who enrols: decided when ranks are
    assigned, and clamped there (recorded in the job's AutoRank record) if unmet.
    """
    budget = spec.rank.budget
    if budget is None or budget.upload_bytes_per_round is None:
        return
    limit = budget.upload_bytes_per_round
    smallest = spec.enrolment.min_clients
    largest = max(smallest, spec.enrolment.target_clients or max_clients)
    floor = sample_size(spec, smallest) * upload_bytes(spec, spec.rank.r_min)
    ceiling = sample_size(spec, largest) * upload_bytes(spec, spec.rank.r_max)
    if floor > limit:
        raise InvalidRequest(
            f"rank.budget.upload_bytes_per_round ({limit}) is below what a round uploads with "
            f"every client at r_min={spec.rank.r_min} ({floor} bytes from "
            f"{sample_size(spec, smallest)} clients): raise the budget, lower rank.r_min or "
            "sample fewer clients"
        )
    if ceiling < limit:
        raise InvalidRequest(
            f"rank.budget.upload_bytes_per_round ({limit}) is above what a round uploads with "
            f"every client at r_max={spec.rank.r_max} ({ceiling} bytes from "
            f"{sample_size(spec, largest)} clients), so it can never be spent: lower the budget "
            "or raise rank.r_max"
        )


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
        _matrix(rows),
        policy.r_min,
        policy.r_max,
        grid=policy.grid,
        default=policy.default,
        reference=_job_reference(job, policy),
        budget=_budget(spec, clients),
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
    """Score a client that enrols after the start against the stored cohort (others unchanged).

    It is scored with the reference and budget shift the cohort was ranked with (a record
    without a reference predates the bounds reference: the cohort one). The budget is not
    re-spent: a late joiner may take a round past it.
    """
    policy = spec.rank
    record = job.autorank or {}
    cohort = record.get("matrix")
    if policy.policy == "fixed" or not cohort:
        client.rank = _cap(policy.default, client)
        return
    result = record.get("result") or {}
    reference = reference_of(policy) if result.get("reference") == "bounds" else None
    try:
        closeness, rank = score_late_joiner(
            _matrix(cohort),
            _matrix([_stored_row(client)])[0],
            policy.r_min,
            policy.r_max,
            grid=policy.grid,
            default=policy.default,
            reference=reference,
            shift=float(result.get("shift") or 0.0),
        )
    except AutoRankError as exc:
        raise InvalidRequest(f"rank: {exc}") from exc
    client.rank = _cap(int(rank), client)
    client.closeness = float(closeness)
