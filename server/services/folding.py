"""Folding a round's accepted updates into a strategy's accumulator, read from the store.

The pure part of an aggregation step: whole rounds (``compute_round``), one shard's partial
sums (``compute_partial``) and the merge of every shard's partial sums (``combine_partials``).
Updates are read and folded one at a time, so memory is one adapter whatever the number of
clients. The steps that claim, commit and transition are in ``services.aggregation``.
"""

from __future__ import annotations

import functools
import hashlib
import time
import uuid
from dataclasses import dataclass
from typing import Any

from server.aggregation import Accumulator, ClientUpdate
from server.db.models import GlobalAdapter, Job
from server.services import sharding
from server.services.runtime import Runtime
from server.services.strategies import client_scale, modules_of, spec_of, strategy_for
from server.storage import global_key
from server.tensors import load_adapter, load_adapter_part, load_partial_sums, save_adapter


@dataclass(frozen=True)
class Work:
    """What one aggregation step folds: the job, the round, its starting adapter, its updates."""

    job: Job
    number: int
    previous_key: str
    # (client id, key, n_samples, rank) in the order they are folded (CLIENT_ORDER).
    updates: list[tuple[uuid.UUID, str, int, int]]

    @functools.cached_property
    def scales(self) -> dict[int, float]:
        """The LoRA scale of each rank present, computed once (not once per update)."""
        return {rank: client_scale(self.job, rank) for rank in {row[3] for row in self.updates}}


def _client_update(work: Work, row: tuple[uuid.UUID, str, int, int], tensors: dict) -> ClientUpdate:
    client_id, _key, n_samples, rank = row
    return ClientUpdate(
        tensors=tensors,
        num_samples=n_samples,
        scale=work.scales[rank],
        client_id=str(client_id),
    )


def compute_round(rt: Runtime, work: Work) -> tuple[GlobalAdapter, dict[str, object]]:
    started = time.perf_counter()
    strategy = strategy_for(work.job)
    with rt.store.local_path(work.previous_key) as path:
        previous = load_adapter(path)
    accumulator = strategy.accumulator(previous)
    read_s = 0.0
    bytes_in = 0
    for row in work.updates:
        t0 = time.perf_counter()
        with rt.store.local_path(row[1]) as path:
            bytes_in += path.stat().st_size
            tensors = load_adapter(path)
        read_s += time.perf_counter() - t0
        # Every value was checked finite when the upload was accepted.
        accumulator.add(_client_update(work, row, tensors), check_finite=False)
    stats: dict[str, object] = {"read_seconds": round(read_s, 6), "bytes_in": bytes_in}
    return _publish(rt, work, accumulator.result(), accumulator, started, stats)


def compute_partial(
    rt: Runtime, work: Work, group: int, groups: int, clients: int, client_groups: int
) -> tuple[bytes, dict[str, object]]:
    started = time.perf_counter()
    strategy = strategy_for(work.job)
    assignment = sharding.module_group_of(modules_of(spec_of(work.job)), groups)

    def mine(key: str) -> bool:
        return sharding.owner_of(key, assignment) == group

    with rt.store.local_path(work.previous_key) as path:
        previous, _ = load_adapter_part(path, mine)
    accumulator = strategy.accumulator(previous)
    read_s = 0.0
    bytes_in = 0
    for row in work.updates[sharding.client_slice(len(work.updates), clients, client_groups)]:
        t0 = time.perf_counter()
        with rt.store.local_path(row[1]) as path:
            tensors, size = load_adapter_part(path, mine)
        bytes_in += size
        read_s += time.perf_counter() - t0
        accumulator.add(_client_update(work, row, tensors), check_finite=False)
    blob = save_adapter(accumulator.state())
    return blob, {
        "seconds": round(time.perf_counter() - started, 6),
        "read_seconds": round(read_s, 6),
        "bytes_in": bytes_in,
        "updates": accumulator.num_updates,
    }


def combine_partials(
    rt: Runtime,
    work: Work,
    partials: list[tuple[int, int, str]],
    shard_stats: list[dict[str, Any]],
) -> tuple[GlobalAdapter, dict[str, object]]:
    started = time.perf_counter()
    strategy = strategy_for(work.job)
    modules = modules_of(spec_of(work.job))
    with rt.store.local_path(work.previous_key) as path:
        previous = load_adapter(path)
    merged: dict[int, Accumulator] = {}
    for group, groups, key in partials:
        assignment = sharding.module_group_of(modules, groups)
        mine = {k: v for k, v in previous.items() if sharding.owner_of(k, assignment) == group}
        with rt.store.local_path(key) as path:
            part = strategy.accumulator_from_state(load_partial_sums(path), mine)
        if group in merged:
            merged[group].merge(part)
        else:
            merged[group] = part
    result: dict = {}
    for group in sorted(merged):  # per-module strategies: the groups' results are disjoint
        result.update(merged[group].result())

    def total(name: str) -> float:
        return sum(float(s.get(name, 0)) for s in shard_stats)

    stats: dict[str, object] = {
        "read_seconds": round(total("read_seconds"), 6),
        "bytes_in": int(total("bytes_in")),
        "shards": len(partials),
        "shard_seconds": round(total("seconds"), 6),
    }
    return _publish(rt, work, result, merged[0], started, stats)


def _publish(
    rt: Runtime,
    work: Work,
    result: dict,
    accumulator: Accumulator,
    started: float,
    stats: dict[str, object],
) -> tuple[GlobalAdapter, dict[str, object]]:
    # No job/round metadata: safetensors writes a multi-key metadata map in random order, and
    # the bytes (sha256) of a round's adapter must not depend on which worker wrote it.
    blob = save_adapter(result)
    key = global_key(work.job.id, work.number)
    rt.store.put_bytes(key, blob)
    adapter = GlobalAdapter(
        storage_key=key,
        sha256=hashlib.sha256(blob).hexdigest(),
        size_bytes=len(blob),
        rank=work.job.r_max,
        n_updates=accumulator.num_updates,
        total_samples=accumulator.total_samples,
    )
    return adapter, {
        "seconds": round(time.perf_counter() - started, 6),
        **stats,
        "bytes_out": len(blob),
        "updates": accumulator.num_updates,
        "coverage": [float(c) for c in accumulator.coverage()],
    }
