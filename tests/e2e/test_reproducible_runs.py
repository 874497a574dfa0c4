"""A run is a function of its seed: the same spec, seed and clients give the same rounds.

Each job runs against a real ``flaas serve`` (SQLite and Postgres) with simulated digits
clients. Two runs with one seed must agree on everything the platform chooses or computes:
the sampled clients, their ranks and AutoRank closeness, every uploaded update (sha256), every
client metric except timings, and every round's global adapter (sha256). Client ids are
random UUIDs, different in every run: runs are compared through client names.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from client_sdk.simulate import run_simulation
from client_sdk.tasks.job_spec import task_job_spec
from tests.live import LiveCoordinator, running_coordinator

pytestmark = pytest.mark.slow

CLIENTS, ROUNDS = 4, 3
TIMINGS = {"train_seconds"}  # metrics that measure the machine, not the run


def run_job(live: LiveCoordinator, tmp_path: Path, strategy: str, seed: int) -> dict[str, Any]:
    """Run one job to its end; returns what the platform chose and computed, keyed by name."""
    spec = task_job_spec("digits", strategy=strategy, clients=CLIENTS, rounds=ROUNDS, seed=seed)
    spec["sampling"] = {"fraction": 0.75}  # 3 of 4 clients a round: sampling and fold order
    with live.operator() as http:
        job = http.post("/api/v1/jobs", json=spec).raise_for_status().json()
    results = run_simulation(
        live.url,
        job["id"],
        job["join_token"],
        clients=CLIENTS,
        state_dir=tmp_path / f"{strategy}-{seed}-{time.monotonic_ns()}",
    )
    assert {r.status for r in results} == {"finished"}, results
    with live.operator() as http:
        base = f"/api/v1/jobs/{job['id']}"
        clients = http.get(f"{base}/clients", params={"limit": 100}).json()["items"]
        names = {c["id"]: c["name"] for c in clients}
        rounds = [http.get(f"{base}/rounds/{n}").json() for n in range(ROUNDS + 1)]
        autorank = http.get(base).json()["autorank"]
    return {
        "clients": sorted((c["name"], c["rank"], c["closeness"]) for c in clients),
        "autorank": autorank,
        "adapters": [r["global_adapter"]["sha256"] for r in rounds],
        "updates": [
            sorted(
                (
                    names[u["client_id"]],
                    u["status"],
                    u["rank"],
                    u["n_samples"],
                    u["sha256"],
                    {k: v for k, v in (u["metrics"] or {}).items() if k not in TIMINGS},
                )
                for u in r["updates"]
            )
            for r in rounds
        ],
    }


@pytest.mark.parametrize("strategy", ["rbla", "fedsa"])
def test_the_same_seed_gives_the_same_rounds_and_adapters(
    database_url: str, tmp_path: Path, strategy: str
) -> None:
    with running_coordinator(database_url, tmp_path) as live:
        first = run_job(live, tmp_path, strategy, seed=11)
        again = run_job(live, tmp_path, strategy, seed=11)
        other = run_job(live, tmp_path, strategy, seed=12)

    assert all(len(u) == 3 for u in first["updates"][1:]), first["updates"]  # 3 of 4 sampled
    for part in ("clients", "autorank", "updates", "adapters"):
        assert again[part] == first[part], part
    # The seed matters: the round-0 draw and everything trained from it differ.
    assert all(a != b for a, b in zip(other["adapters"], first["adapters"], strict=True))
