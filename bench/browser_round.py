"""The browser client's local round on digits against the Python client's, and the join page's
transferred bytes.

Run: ``.venv/bin/python bench/browser_round.py`` (``--rounds 8 --rank 8 --device 0 --of 4
--repeats 3``;
``--out bench/results/browser-round-<date>.md`` writes the protocol and the numbers there).

One local coordinator (``LocalCoordinator``: a child process, SQLite, files, in-process
aggregation). Two jobs of the same spec, one after the other, never at the same time: the
``digits`` task's job (``task_job_spec``: Adam 1e-2, batch 16, one epoch, LoRA on fc1/fc2 and
the head fc3 trained in full, RBLA) with one client at a **fixed rank** (``--rank``), so that
both clients train the same adapter shapes on

* **the same data**: the rows of device ``--device`` of ``--of`` of the bundled sample (the
  Dirichlet split of ``flaas simulate``, client_sdk.splits, alpha 0.5, seed 0), given to the
  browser as a CSV file picked on the join page (``parseDataFile``) and to the Python client as
  the same arrays; each holds out 20 % for validation with its own shuffle (same sizes);
* **browser**: Debian's Chromium, headless, one tab of a fresh context, the join page's own
  script and the committed bundle (``server/join/static/flaas-client.js``);
* **python**: ``client_sdk.Client`` with ``LoraRound`` / ``LoraTrainer`` (torch, CPU, one torch
  thread, as ``flaas simulate`` runs each client).

Per round: ``train_seconds``, the local training time each client reports with its update
(``Flaas-Metrics``: the optimisation loop only, both measured the same way), and the round as
the coordinator saw it: from the round's opening to the update's acceptance (task answer,
adapter download, training, validation, upload). Round 1 is reported apart (first-call costs:
the browser's JIT, torch's first graph): the median over the runs; the steady figure is the
median of rounds 2..N of every run. Browser and Python runs alternate (``--repeats`` each), so
that a busy spell of a shared machine falls on both.

Page weight: the join page loaded with the cache disabled (Chrome DevTools Protocol), every
response's headers and body counted, split into the page (HTML, CSS, scripts, digits assets) and
the API calls of the whole run.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from client_sdk.tasks.job_spec import task_job_spec
from server.join import join_link
from server.local_coordinator import LocalCoordinator
from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS

ROOT = Path(__file__).resolve().parent.parent
DONE = "has ended"


def device_rows(device: int, of: int) -> tuple[np.ndarray, np.ndarray]:
    """The pixels (0..16) and labels of the bundled sample's device ``device`` of ``of``."""
    from client_sdk.splits import dirichlet_split
    from client_sdk.tasks import get_task

    pool = get_task("digits").load(seed=0)
    rows = dirichlet_split(pool.y_train, of, 0.5, min_size=20, seed=0)[device]
    return np.rint(pool.x_train[rows] * 16).astype(np.int64), pool.y_train[rows]


def job_spec(rounds: int, rank: int) -> dict[str, Any]:
    spec = task_job_spec("digits", strategy="rbla", clients=1, rounds=rounds)
    spec["rank"] = {"policy": "fixed", "r_min": 2, "r_max": 16, "default_rank": rank}
    return spec


def run_browser(
    coordinator: LocalCoordinator, spec: dict[str, Any], csv: Path, timeout_s: float
) -> tuple[str, dict[str, int]]:
    """One browser device through the whole job; (job id, bytes by kind)."""
    from playwright.sync_api import sync_playwright

    with coordinator.operator() as http:
        job = http.post("/api/v1/jobs", json={**spec, "name": "bench-browser"}).json()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        page = browser.new_context().new_page()
        cdp = page.context.new_cdp_session(page)
        cdp.send("Network.enable")
        cdp.send("Network.setCacheDisabled", {"cacheDisabled": True})
        weight = {"page": 0, "api": 0, "requests": 0}

        def count(request: Any) -> None:
            sizes = request.sizes()
            kind = "api" if "/api/v1/" in request.url else "page"
            weight[kind] += sizes["responseBodySize"] + sizes["responseHeadersSize"]
            weight["requests"] += 1

        page.on("requestfinished", count)
        page.goto(join_link(coordinator.url, job["id"], job["join_token"]))
        page.wait_for_selector("[data-testid=join-facts]")
        page.set_input_files("#data-file", str(csv))
        page.click("[data-testid=join-button]")
        page.wait_for_function(
            "(done) => document.querySelector('[data-testid=status]')?.textContent.includes(done)",
            arg=DONE,
            timeout=timeout_s * 1000,
        )
        page.wait_for_timeout(300)
        browser.close()
    return str(job["id"]), weight


def run_python(
    coordinator: LocalCoordinator, spec: dict[str, Any], x: np.ndarray, y: np.ndarray
) -> str:
    import torch

    from client_sdk.client import Client
    from client_sdk.lora_round import LoraRound
    from client_sdk.tasks import get_task
    from client_sdk.trainer import LoraTrainer

    torch.set_num_threads(1)
    with coordinator.operator() as http:
        job = http.post("/api/v1/jobs", json={**spec, "name": "bench-python"}).json()
    task = get_task("digits")
    order = np.random.default_rng(0).permutation(len(y))
    n_val = max(1, round(len(y) * 0.2))
    features = (x / 16.0).astype(np.float32)
    val, train = order[:n_val], order[n_val:]
    train_round = LoraRound(
        LoraTrainer(task.model_spec()),
        task.dataset(features[train], y[train]),
        task.dataset(features[val], y[val]),
    )
    with tempfile.TemporaryDirectory(prefix="flaas-bench-python-") as state:
        client = Client(coordinator.url, job["id"], join_token=job["join_token"], state_dir=state)
        client.run(train_round)
    return str(job["id"])


def rounds_of(coordinator: LocalCoordinator, job_id: str) -> list[tuple[float, float]]:
    """(train_seconds, open-to-accepted seconds) of the job's one client, per round."""
    out = []
    with coordinator.operator() as http:
        job = http.get(f"/api/v1/jobs/{job_id}").json()
        assert job["status"] == "finished", job
        for number in range(1, job["total_rounds"] + 1):
            rnd = http.get(f"/api/v1/jobs/{job_id}/rounds/{number}").json()
            (update,) = [u for u in rnd["updates"] if u["status"] == "accepted"]
            opened = datetime.fromisoformat(rnd["opened_at"])
            accepted = datetime.fromisoformat(update["accepted_at"])
            out.append((update["metrics"]["train_seconds"], (accepted - opened).total_seconds()))
    return out


def steady_train(runs: list[list[tuple[float, float]]]) -> float:
    return statistics.median(t for rounds in runs for t, _ in rounds[1:])


def summary(name: str, runs: list[list[tuple[float, float]]]) -> str:
    """One table row: medians over the repeats (round 1) and over rounds 2..N of all of them."""
    first = [rounds[0] for rounds in runs]
    steady = [r for rounds in runs for r in rounds[1:]]
    return (
        f"| {name} | {statistics.median(t for t, _ in first):.3f} | {steady_train(runs):.3f} | "
        f"{statistics.median(w for _, w in first):.3f} | "
        f"{statistics.median(w for _, w in steady):.3f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--device", type=int, default=0)
    parser.add_argument("--of", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="browser and python runs each")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--out", type=Path, default=None, help="write the report here")
    args = parser.parse_args()
    x, y = device_rows(args.device, args.of)
    spec = job_spec(args.rounds, args.rank)
    with tempfile.TemporaryDirectory(prefix="flaas-bench-browser-") as scratch:
        csv = Path(scratch) / "device.csv"
        np.savetxt(csv, np.column_stack([x, y]), fmt="%d", delimiter=",")
        data = Path(scratch) / "coordinator"
        data.mkdir()
        browser: list[list[tuple[float, float]]] = []
        python: list[list[tuple[float, float]]] = []
        with LocalCoordinator(data) as coordinator:
            for _ in range(args.repeats):  # alternating, so that a busy spell hits both
                browser_job, weight = run_browser(coordinator, spec, csv, args.timeout)
                browser.append(rounds_of(coordinator, browser_job))
                python.append(rounds_of(coordinator, run_python(coordinator, spec, x, y)))
    chromium = subprocess.run([str(CHROMIUM), "--version"], capture_output=True, text=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs"
    ratio = steady_train(browser) / steady_train(python)
    lines = [
        f"digits, rank {args.rank} (fixed), RBLA, {args.rounds} rounds x {args.repeats} runs; "
        f"device {args.device} of {args.of} of the bundled sample: {len(y)} rows "
        "(80 % trained, 20 % validated); "
        f"commit {commit.stdout.strip()}, {chromium.stdout.strip()}, {machine}",
        "",
        "| client | round 1 train s | steady train s (median 2..N) | round 1 open→accepted s "
        "| steady open→accepted s |",
        "|---|---|---|---|---|",
        summary("browser (Chromium)", browser),
        summary("python (torch, 1 thread)", python),
        "",
        f"browser / python steady local training: {ratio:.2f}x",
        "",
        f"join page, cold cache: {weight['page']:,} bytes of page (HTML, CSS, scripts, digits "
        f"assets); {weight['api']:,} bytes of API calls over the {args.rounds}-round job; "
        f"{weight['requests']} requests in all",
    ]
    report = "\n".join(lines)
    print(report)
    if args.out is not None:
        protocol = __doc__.split("\n\n", 2)[2]
        args.out.write_text(
            f"# bench/browser_round.py, {datetime.now(UTC):%Y-%m-%d}\n\n"
            f"```\n.venv/bin/python bench/browser_round.py --rounds {args.rounds} --rank "
            f"{args.rank} --device {args.device} --of {args.of} --repeats {args.repeats}\n```\n\n"
            f"{report}\n\n## Protocol\n\n{protocol}"
        )


if __name__ == "__main__":
    main()
