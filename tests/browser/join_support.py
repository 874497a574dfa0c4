"""Helpers for the join page's browser tests: Python SDK clients beside the browsers, a browser
device on the join page, and the updates the coordinator stored."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from safetensors import safe_open

from server.storage.keys import update_key
from tests.live import LiveCoordinator

#: The bundled sample's cohort (client_sdk.splits' Dirichlet split, as ``flaas simulate``).
COHORT = 6
DONE = "has ended"


@contextmanager
def python_clients(
    live: LiveCoordinator, job: dict[str, Any], devices: range, state_dir: Path
) -> Iterator[list[Any]]:
    """SDK clients on devices ``devices`` of the cohort, each on a thread, running until the
    job ends; yields the list their RunResults land in (joined on exit)."""
    import torch

    from client_sdk.client import Client
    from client_sdk.lora_round import LoraRound
    from client_sdk.simulate import make_shards
    from client_sdk.tasks import get_task
    from client_sdk.trainer import LoraTrainer

    torch.set_num_threads(1)
    task = get_task("digits")
    pool = task.load(seed=0)
    shards = make_shards(pool.y_train, pool.x_train, COHORT, alpha=0.5, seed=0)
    results: list[Any] = []
    clients = []
    for i in devices:
        shard = shards[i]
        train = LoraRound(
            LoraTrainer(task.model_spec()),
            task.dataset(shard.x_train, shard.y_train),
            task.dataset(shard.x_val, shard.y_val),
        )
        client = Client(
            live.url,
            job["id"],
            join_token=job["join_token"],
            state_dir=state_dir / f"python-{i}",
            name=f"python-{i}",
        )
        clients.append((client, train))
    threads = [
        threading.Thread(target=lambda c=c, t=t: results.append(c.run(t)), daemon=True)
        for c, t in clients
    ]
    for thread in threads:
        thread.start()
    try:
        yield results
    finally:
        for client, _ in clients:
            if len(results) < len(clients):
                client.stop()
        for thread in threads:
            thread.join(timeout=60)


def open_join_page(context: Any, live: LiveCoordinator, job: dict[str, Any]) -> Any:
    """A page of ``context`` on the job's join link, with its script errors kept."""
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    page.goto(f"{live.url}/join/{job['id']}#t={job['join_token']}")
    page.wait_for_selector("[data-testid=join-facts]")
    return page


def join_with_sample(page: Any, device: int, of: int = COHORT) -> None:
    page.check("#data-sample")
    page.fill("#sample-index", str(device))
    page.fill("#sample-devices", str(of))
    page.click("[data-testid=join-button]")


def wait_done(page: Any, timeout_s: float) -> None:
    page.wait_for_function(
        "(done) => document.querySelector('[data-testid=status]')?.textContent.includes(done)",
        arg=DONE,
        timeout=timeout_s * 1000,
    )


def stored_updates(live: LiveCoordinator, job_id: str) -> list[dict[str, Any]]:
    """Every accepted update of the job, with its round, client, rank and stored tensors'
    shapes (read from the coordinator's adapter store on disk)."""
    out = []
    with live.operator() as http:
        rounds = http.get(f"/api/v1/jobs/{job_id}/rounds", params={"limit": 200}).json()
        for rnd in rounds["items"]:
            if rnd["number"] == 0:
                continue
            detail = http.get(f"/api/v1/jobs/{job_id}/rounds/{rnd['number']}").json()
            for update in detail["updates"]:
                if update["status"] != "accepted":
                    continue
                key = update_key(job_id, rnd["number"], update["client_id"], update["sha256"])
                out.append({**update, "round": rnd["number"], "shapes": tensor_shapes(live, key)})
    return out


def tensor_shapes(live: LiveCoordinator, key: str) -> dict[str, list[int]]:
    with safe_open(str(live.workdir / "adapters" / key), framework="numpy") as blob:
        return {name: list(blob.get_slice(name).get_shape()) for name in blob.keys()}  # noqa: SIM118


def expected_shapes(spec: dict[str, Any], rank: int, parts: tuple[str, ...]) -> dict[str, list]:
    """What a client of ``rank`` uploads for a job whose layout is ``spec``'s (the peft keys,
    A as (rank, d_in) and B as (d_out, rank)), ``parts`` of it; "extra" adds the head."""
    shapes: dict[str, list[int]] = {}
    for module, (d_in, d_out) in spec["modules"].items():
        if "lora_A" in parts:
            shapes[f"{module}.lora_A.weight"] = [rank, d_in]
        if "lora_B" in parts:
            shapes[f"{module}.lora_B.weight"] = [d_out, rank]
    if "extra" in parts:
        shapes.update({name: list(shape) for name, shape in spec["extra"].items()})
    return shapes


def clients_by_name(http: httpx.Client, job_id: str) -> dict[str, dict[str, Any]]:
    page = http.get(f"/api/v1/jobs/{job_id}/clients", params={"limit": 100}).json()
    return {c["name"]: c for c in page["items"]}
