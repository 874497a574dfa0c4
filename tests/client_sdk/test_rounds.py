"""RoundContext.training_seed: from the job's seed, the round and the client's name."""

from __future__ import annotations

from typing import Any

from client_sdk.rounds import RoundContext, RoundTask


def context(*, seed: int = 7, round_number: int = 1, **who: Any) -> RoundContext:
    task = RoundTask.from_json(
        {
            "job_id": "j", "round_id": "r", "round_number": round_number, "rank": 4,
            "lora_alpha": 8.0, "use_rslora": False, "adapter_type": "lora", "strategy": "rbla",
            "shared_parts": ["lora_A"], "frozen_parts": [], "training": {}, "model": None,
            "seed": seed, "adapter_url": "/a", "upload_url": "/u",
            "deadline_at": "2030-01-01T00:00:00Z",
        }
    )  # fmt: skip
    return RoundContext(task=task, adapter=b"", private=None, **who)


def test_the_seed_follows_the_name_not_the_random_client_id() -> None:
    first = context(client_id="3f0c-run-1", client_name="sim-000").training_seed
    assert context(client_id="91ab-run-2", client_name="sim-000").training_seed == first
    assert context(client_id="3f0c-run-1", client_name="sim-001").training_seed != first


def test_the_seed_changes_with_the_job_seed_and_the_round() -> None:
    seeds = {
        context(seed=seed, round_number=n, client_id="c", client_name="sim-000").training_seed
        for seed in (7, 8)
        for n in (1, 2, 3)
    }
    assert len(seeds) == 6
    assert all(0 <= s < 2**32 for s in seeds)


def test_a_client_without_a_name_is_seeded_by_its_id() -> None:
    assert context(client_id="c1").training_seed == context(client_id="c1").training_seed
    assert context(client_id="c1").training_seed != context(client_id="c2").training_seed
    # A name spelled like another client's id is still another identity.
    assert context(client_id="c1").training_seed != (
        context(client_id="x", client_name="c1").training_seed
    )
