"""Sharded aggregation (module groups x client groups) against the unsharded library result,
and the claim rules that make every step safe to deliver twice, on SQLite and Postgres."""

from __future__ import annotations

import dataclasses
import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load, save
from sqlalchemy import select

from server.aggregation import ClientUpdate, get_strategy
from server.db.models import AggregationShard, Job, UpdateStatus, utcnow
from server.db.models import ClientUpdate as UpdateRow
from server.db.session import session_scope
from server.services import aggregation
from server.services.runtime import Runtime
from server.services.strategies import client_scale
from server.storage import global_key
from tests.api.conftest import RunningJob, start_job
from tests.support import adapter_tensors, coordinator, operator, settings_for


class Steps:
    """A step dispatcher that queues steps; ``drain`` runs them (in a shuffled order)."""

    def __init__(self) -> None:
        self.queue: list[tuple[str, uuid.UUID, int]] = []

    def __call__(self, round_id: uuid.UUID) -> None:
        self.queue.append(("round", round_id, -1))

    def shard(self, round_id: uuid.UUID, index: int) -> None:
        self.queue.append(("shard", round_id, index))

    def combine(self, round_id: uuid.UUID) -> None:
        self.queue.append(("combine", round_id, -1))

    def run(
        self, rt: Runtime, step: tuple[str, uuid.UUID, int], attempt: str | None = None
    ) -> None:
        kind, round_id, index = step
        if kind == "round":
            aggregation.aggregate_round(rt, round_id, attempt=attempt)
        elif kind == "shard":
            aggregation.aggregate_shard(rt, round_id, index, attempt=attempt)
        else:
            aggregation.combine_round(rt, round_id)

    def drain(self, rt: Runtime, seed: int = 0) -> list[str]:
        ran = []
        rng = random.Random(seed)
        while self.queue:
            step = self.queue.pop(rng.randrange(len(self.queue)))
            ran.append(step[0])
            self.run(rt, step)
        return ran


@pytest.fixture
def api(database_url: str, tmp_path: Path) -> Iterator[TestClient]:
    with coordinator(settings_for(database_url, tmp_path / "adapters")) as client:
        yield client


def sharded_runtime(api: TestClient, **settings: Any) -> tuple[Runtime, Steps]:
    """Swap the app's dispatcher for ``Steps`` and lower the shard threshold to 1 byte."""
    rt: Runtime = api.app.state.runtime  # type: ignore[attr-defined]
    steps = Steps()
    values = {"shard_threshold_bytes": 1, "shard_modules": 2, **settings}
    rt = dataclasses.replace(rt, dispatch=steps, settings=rt.settings.model_copy(update=values))
    api.app.state.runtime = rt  # type: ignore[attr-defined]
    return rt, steps


def upload_all(api: TestClient, job: RunningJob, parts: tuple[str, ...], head: bool) -> str:
    round_id = ""
    for index in range(len(job.clients)):
        task = api.get("/api/v1/clients/me/task", headers=job.headers(index)).json()
        body = save(adapter_tensors(task["rank"], parts=parts, head=head, seed=index))
        response = api.put(
            task["upload_url"],
            content=body,
            headers={**job.headers(index), "Flaas-Num-Samples": str(7 + 5 * index)},
        )
        assert response.status_code == 201, response.text
        round_id = task["round_id"]
    return round_id


def reference(rt: Runtime, round_id: str) -> dict[str, torch.Tensor]:
    """The library's one-shot aggregate of the round's stored updates (unsharded)."""
    with session_scope(rt.sessions) as session:
        rows = session.scalars(
            select(UpdateRow).where(
                UpdateRow.round_id == uuid.UUID(round_id),
                UpdateRow.status == UpdateStatus.ACCEPTED,
            )
        ).all()
        job = session.scalars(select(Job)).one()
        updates = [
            ClientUpdate(
                tensors=load(rt.store.get_bytes(row.storage_key or "")),
                num_samples=row.n_samples or 0,
                scale=client_scale(job, row.rank),
                client_id=str(row.client_id),
            )
            for row in rows
        ]
        strategy = get_strategy(job.strategy, r_max=job.r_max, **job.strategy_options)
        job_id = job.id
    previous = load(rt.store.get_bytes(global_key(job_id, 0)))
    return strategy.aggregate(updates, previous)


def products(adapter: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {k: v for k, v in adapter.items() if ".lora_" not in k}
    for key, a in adapter.items():
        if key.endswith(".lora_A.weight"):
            out[key] = adapter[key.replace("lora_A", "lora_B")] @ a
    return out


STRATEGIES: dict[str, tuple[tuple[str, ...], bool, dict[str, Any]]] = {
    "rbla": (("lora_A", "lora_B"), True, {}),
    "hetlora": (("lora_A", "lora_B"), True, {}),
    "flexlora": (("lora_A", "lora_B"), True, {}),
    "fedsa": (("lora_A",), False, {}),
}


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_sharded_round_equals_the_unsharded_aggregate(api: TestClient, strategy: str) -> None:
    parts, head, options = STRATEGIES[strategy]
    rt, steps = sharded_runtime(api)
    job = start_job(api, strategy=strategy, strategy_options=options)
    round_id = upload_all(api, job, parts, head)
    assert [kind for kind, _, _ in steps.queue] == ["round"]
    ran = steps.drain(rt, seed=3)
    # entry, 2 module groups x 3 client groups, then one combine queued by the last shard
    assert ran.count("shard") == 6 and ran[-1] == "combine" and ran.count("combine") == 1

    detail = api.get(f"/api/v1/jobs/{job.id}/rounds/1", headers=operator(api)).json()
    assert detail["status"] == "closed", detail
    assert detail["aggregation"]["shards"] == 6
    assert detail["global_adapter"]["n_updates"] == 3
    got = load(api.get(f"/api/v1/jobs/{job.id}/adapter?round=1", headers=operator(api)).content)
    want = reference(rt, round_id)
    assert set(got) == set(want)
    if strategy == "flexlora":
        # SVD factors are defined up to the signs of singular vectors, which a different
        # summation order may flip: the aggregated update is their product.
        got, want = products(got), products(want)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-5, msg=key)
    # the partial sums are deleted once the round is closed
    with session_scope(rt.sessions) as session:
        keys = session.scalars(select(AggregationShard.storage_key)).all()
    assert len(keys) == 6 and not any(rt.store.exists(k) for k in keys if k)


def test_duplicate_and_redelivered_steps_are_harmless(api: TestClient) -> None:
    rt, steps = sharded_runtime(api, shard_modules=1)
    job = start_job(api)
    upload_all(api, job, ("lora_A", "lora_B"), True)
    entry = steps.queue.pop()
    steps.run(rt, entry, attempt="first")
    shard_steps = list(steps.queue)
    assert [k for k, _, _ in shard_steps] == ["shard"] * 3
    steps.queue.clear()
    round_id = entry[1]

    # A worker claims shard 0 and dies: a duplicate (another task id) must leave it alone...
    with session_scope(rt.sessions) as session:
        shard = session.get_one(AggregationShard, (round_id, 0))
        shard.status, shard.claimed_by, shard.attempts = "running", "dead-worker", 1
        shard.claimed_at = utcnow()
    steps.run(rt, shard_steps[0], attempt="duplicate")
    with session_scope(rt.sessions) as session:
        assert session.get_one(AggregationShard, (round_id, 0)).claimed_by == "dead-worker"
    # ...but the redelivery of the same message (same task id) takes it over.
    steps.run(rt, shard_steps[0], attempt="dead-worker")
    for step in shard_steps[1:] * 2:  # every other shard delivered twice
        steps.run(rt, step, attempt=f"t{step[2]}")
    # A shard found done re-queues the combine (its first message may have been lost).
    assert {k for k, _, _ in steps.queue} == {"combine"} and len(steps.queue) == 3
    steps.drain(rt)
    detail = api.get(f"/api/v1/jobs/{job.id}/rounds/1", headers=operator(api)).json()
    assert detail["status"] == "closed" and detail["global_adapter"]["n_updates"] == 3
    with session_scope(rt.sessions) as session:
        attempts = {s.index: s.attempts for s in session.scalars(select(AggregationShard))}
    assert attempts == {0: 2, 1: 1, 2: 1}


def test_a_worker_lost_too_often_fails_the_round_visibly(api: TestClient) -> None:
    rt, steps = sharded_runtime(api, shard_threshold_bytes=10**9, aggregation_max_attempts=2)
    job = start_job(api)
    upload_all(api, job, ("lora_A", "lora_B"), True)
    entry = steps.queue.pop()
    with session_scope(rt.sessions) as session:
        session.add(
            AggregationShard(
                round_id=entry[1],
                index=0,
                module_group=0,
                module_groups=1,
                client_group=0,
                client_groups=1,
                status="running",
                attempts=2,
                claimed_by="lost",
            )
        )
    steps.run(rt, entry, attempt="lost")
    detail = api.get(f"/api/v1/jobs/{job.id}/rounds/1", headers=operator(api)).json()
    assert detail["status"] == "failed"
    assert "started 2 time(s) and its worker was lost" in detail["failure_reason"]


def test_a_corrupt_update_blob_fails_the_sharded_round_with_its_reason(api: TestClient) -> None:
    rt, steps = sharded_runtime(api)
    job = start_job(api)
    round_id = upload_all(api, job, ("lora_A", "lora_B"), True)
    with session_scope(rt.sessions) as session:
        key = session.scalars(
            select(UpdateRow.storage_key).where(UpdateRow.round_id == uuid.UUID(round_id))
        ).first()
    rt.store.put_bytes(key or "", b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    steps.drain(rt)
    detail = api.get(f"/api/v1/jobs/{job.id}/rounds/1", headers=operator(api)).json()
    assert detail["status"] == "failed"
    assert detail["failure_reason"].startswith("aggregation failed:")
    job_out = api.get(f"/api/v1/jobs/{job.id}", headers=operator(api)).json()
    assert job_out["status"] == "failed" and "round 1 failed" in job_out["failure_reason"]
