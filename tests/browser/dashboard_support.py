"""Helpers for the dashboard's browser tests: screenshots, page weights, and a big job.

``seed_scale_job`` writes a 1,000-client, 200-round job straight into the live
coordinator's SQLite database (seconds, instead of minutes of HTTP round trips).
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert, update

from server.db.models import (
    Client,
    ClientUpdate,
    GlobalAdapter,
    Job,
    JobStatus,
    Round,
    RoundStatus,
    UpdateStatus,
)
from server.db.session import make_engine, make_session_factory, session_scope
from server.security import hash_secret

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
CRITERIA = ("n_samples", "label_entropy", "gini_simpson", "loss_entropy")


def screenshot(page: Any, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


class Traffic:
    """Bytes a page load transferred (headers and bodies of every finished response)."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.bytes = 0
        self.requests = 0
        page.on("requestfinished", self._count)

    def _count(self, request: Any) -> None:
        sizes = request.sizes()
        self.bytes += sizes["responseBodySize"] + sizes["responseHeadersSize"]
        self.requests += 1

    def reset(self) -> None:
        self.bytes = 0
        self.requests = 0

    def close(self) -> None:
        self.page.remove_listener("requestfinished", self._count)


def seed_scale_job(
    database_url: str, job_id: str, *, clients: int, rounds: int, sampled: int, r_max: int
) -> None:
    """Fill an enrolling job with ``clients`` ranked clients and ``rounds`` closed rounds of
    ``sampled`` updates each (most accepted with metrics, some stragglers, a rejection),
    then an open round that samples every client."""
    rng = random.Random(0)
    job_uuid = uuid.UUID(job_id)
    start = datetime.now(UTC) - timedelta(hours=rounds)
    ranks = [2 * (1 + i % (r_max // 2)) for i in range(clients)]
    client_rows = [
        {
            "id": uuid.uuid4(),
            "job_id": job_uuid,
            "name": f"device-{i:04d}",
            "credential_hash": hash_secret(f"scale-{job_id}-{i}"),
            "stats": {
                "n_samples": 20 + (i * 37) % 500,
                "label_entropy": round(rng.random(), 3),
                "gini_simpson": round(rng.random(), 3),
                "loss_entropy": round(rng.random(), 3),
            },
            "rank": ranks[i],
            "closeness": round(ranks[i] / r_max - rng.random() / 10, 4),
            "enrolled_at": start + timedelta(seconds=i),
            "last_seen_at": start + timedelta(seconds=i),
        }
        for i in range(clients)
    ]
    round_rows, adapter_rows, update_rows = [], [], []
    # Lower slices are trained by every client, upper ones only by the high-rank clients.
    coverage = [float(sampled * 25 * (r_max - s) // r_max) for s in range(r_max)]
    rejection = "lora_A has shape [3, 8], expected [2, 8]"
    for number in range(rounds + 1):
        opened = start + timedelta(hours=number)
        is_open = number == rounds
        rid = uuid.uuid4()
        round_rows.append(
            {
                "id": rid,
                "job_id": job_uuid,
                "number": number,
                "status": RoundStatus.OPEN if is_open else RoundStatus.CLOSED,
                "sampled": clients if is_open else (0 if number == 0 else sampled),
                "quorum": sampled // 2,
                "opened_at": opened,
                "deadline_at": opened + timedelta(days=30),
                "aggregating_at": None if is_open else opened + timedelta(minutes=20),
                "closed_at": None if is_open else opened + timedelta(minutes=21),
                "aggregation": None if is_open else {"coverage": coverage},
            }
        )
        if not is_open:
            adapter_rows.append(
                {
                    "id": uuid.uuid4(),
                    "round_id": rid,
                    "storage_key": f"scale/{job_id}/{number}",
                    "sha256": "0" * 64,
                    "size_bytes": 4096,
                    "rank": r_max,
                    "n_updates": sampled,
                    "total_samples": sampled * 25,
                }
            )
        if number == 0:
            continue
        rotation = ((number * sampled + k) % clients for k in range(sampled))
        members = range(clients) if is_open else rotation
        for k, i in enumerate(members):
            status = (
                UpdateStatus.PENDING
                if is_open
                else (UpdateStatus.MISSED if k % 10 == 9 else UpdateStatus.ACCEPTED)
            )
            accepted = status == UpdateStatus.ACCEPTED
            progress = number / rounds
            update_rows.append(
                {
                    "id": uuid.uuid4(),
                    "round_id": rid,
                    "client_id": client_rows[i]["id"],
                    "status": status,
                    "rank": ranks[i],
                    "n_samples": 25 if accepted else None,
                    "size_bytes": 400 * ranks[i] if accepted else None,
                    "metrics": {
                        "train_loss": 2.0 * (1 - 0.8 * progress) + rng.random() * 0.3,
                        "val_accuracy": 0.3 + 0.6 * progress - rng.random() * 0.1,
                    }
                    if accepted
                    else None,
                    "upload_seconds": 0.05 if accepted else None,
                    "assigned_at": opened,
                    "accepted_at": opened + timedelta(minutes=5) if accepted else None,
                    "rejections": 1 if k == 0 else 0,
                    "last_rejection": rejection if k == 0 else None,
                }
            )
    engine = make_engine(database_url)
    try:
        with session_scope(make_session_factory(engine)) as session:
            session.execute(insert(Client), client_rows)
            session.execute(insert(Round), round_rows)
            session.execute(insert(GlobalAdapter), adapter_rows)
            session.execute(insert(ClientUpdate), update_rows)
            session.execute(
                update(Job)
                .where(Job.id == job_uuid)
                .values(
                    status=JobStatus.RUNNING,
                    current_round=rounds,
                    started_at=start,
                    autorank={
                        "policy": "autorank",
                        "criteria": list(CRITERIA),
                        "matrix": [[c["stats"][k] for k in CRITERIA] for c in client_rows],
                        "result": {
                            "weights": [0.4, 0.2, 0.25, 0.15],
                            "closeness": [c["closeness"] for c in client_rows],
                            "ranks": ranks,
                            "dropped": [],
                        },
                    },
                )
            )
    finally:
        engine.dispose()
