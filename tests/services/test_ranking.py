"""The ranking service: which reference a job's stored spec asks for, and the budget's caps."""

from __future__ import annotations

from typing import Any

from server.db.models import Client, Job
from server.schemas.job_spec import JobSpec
from server.services.ranking import rank_cohort
from tests.support import job_spec, stats

ALIKE = [stats(383, 0.995), stats(384, 0.998), stats(383, 0.996)]


def _rank(spec_json: dict[str, Any], rows: list[dict[str, Any]], caps: Any = None) -> list[int]:
    job = Job(spec=spec_json)
    caps = caps or [None] * len(rows)
    clients = [Client(stats=s, max_rank=c) for s, c in zip(rows, caps, strict=True)]
    rank_cohort(job, JobSpec.model_validate(spec_json), clients)
    return [int(c.rank) for c in clients if c.rank is not None]


def _stored(**rank: Any) -> dict[str, Any]:
    spec = JobSpec.model_validate(job_spec(rank={"policy": "autorank", "r_min": 2, "r_max": 8}))
    dumped = spec.model_dump(mode="json")
    dumped["rank"].update(rank)
    return dumped


def test_a_spec_stored_before_the_reference_option_keeps_the_cohort_reference() -> None:
    new = _stored()
    old = _stored()
    del old["rank"]["reference"], old["rank"]["reference_samples"], old["rank"]["budget"]
    rows = [{**s, "loss_entropy": 0.6 + 0.01 * i} for i, s in enumerate(ALIKE)]
    assert sorted(_rank(old, rows)) == [2, 5, 8]  # the cohort's ends, as before
    spread = _rank(new, rows)
    assert max(spread) - min(spread) <= 1
    assert sorted(_rank(_stored(reference="cohort"), rows)) == [2, 5, 8]


def test_device_caps_count_in_the_mean_rank_budget() -> None:
    rows = [stats(5000, 0.9), stats(4000, 0.8), stats(50, 0.1)]
    free = _rank(_stored(budget={"mean_rank": 5}), rows)
    capped = _rank(_stored(budget={"mean_rank": 5}), rows, caps=[2, None, None])
    assert sum(free) / 3 <= 5 and sum(capped) / 3 <= 5
    assert capped[0] == 2 and capped[1] >= free[1]  # the capped device's share goes elsewhere
