"""Quality benchmark: aggregation strategies and rank policies through the real platform.

Run: ``.venv/bin/python bench/quality.py`` (the main matrix, 3 seeds; about an hour on two
cores), ``--matrix ranks`` (AutoRank against a fixed rank at the same budget), ``--matrix
rbla-paper`` / ``fedsa-paper`` (the papers' own protocols), ``--matrix smoke`` (one seed, three
rounds: what CI runs). Every run is one ``flaas demo``: the embedded coordinator, a job created
over REST, ten simulated SDK clients training with torch + peft over HTTP. Results are appended
to ``--results`` (JSON lines, one per run; runs already there are not repeated, so an
interrupted matrix resumes) and the report is written to ``--out`` from every run on record.

Scores (``docs/quality.md`` states the protocol next to the tables):

* **global accuracy**: the round's global adapter (rank R) on the task's held-out test set, for
  strategies that have a global model (not the FedSA family).
* **device accuracy** (personalised): after the last round each device's own model, i.e. the
  final global adapter cut to the device's rank (``GET /clients/me/adapter``) with the tensors
  it kept private, scored on the whole test set with each class weighted by its share of the
  device's training labels; the mean over devices. Same protocol for every strategy.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.quality_report import write_report  # noqa: E402

MAIN_STRATEGIES = ("rbla", "rbla-shrink", "zeropad", "flexlora")
SEEDS = (0, 1, 2)


@dataclass(frozen=True)
class Cell:
    """One run: a task (its base model), a split, a strategy, a rank policy and a seed."""

    matrix: str
    task: str
    alpha: float
    strategy: str
    rank: str  # "autorank", "autorank@<mean rank>" (budget) or "fixed@<rank>"
    seed: int
    rounds: int = 20
    clients: int = 10
    training: tuple[tuple[str, Any], ...] = ()
    r_max: int = 16
    max_ranks: tuple[int, ...] | None = None  # per-device capacity (the RBLA paper's ratios)

    @property
    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def cells(matrix: str, seeds: tuple[int, ...]) -> Iterator[Cell]:
    """The runs of a named matrix."""
    if matrix == "smoke":
        for strategy in ("rbla-shrink", "fedsa"):
            yield Cell("smoke", "digits", 0.5, strategy, "autorank", seeds[0], rounds=3, clients=4)
    elif matrix == "main":
        for task, alpha in (("digits", 0.1), ("digits", 0.5), ("mnist", 0.1)):
            for base in ("", "-random"):
                for strategy in MAIN_STRATEGIES:
                    for seed in seeds:
                        yield Cell("main", task + base, alpha, strategy, "autorank", seed)
    elif matrix == "ranks":
        for task, alpha in (("digits", 0.5), ("mnist", 0.1)):
            # Pairs at one budget: AutoRank spending a mean rank against that rank for all.
            for rank in ("autorank@6", "fixed@6", "autorank@12", "fixed@12"):
                for seed in seeds:
                    yield Cell("ranks", task, alpha, "rbla-shrink", rank, seed)
    elif matrix == "rbla-paper":
        # Chen et al.: MLP 784-200-200-10 on a frozen random base, ranks 0.1..1.0 of 160 on
        # fc1/fc2, Adam 1e-3, 5 local epochs, batch 64, all 10 clients, Dirichlet 0.1.
        settings = (("epochs", 5), ("lr", 1e-3), ("batch_size", 64), ("optimizer", "adam"))
        for seed in seeds:  # seed-major: an interrupted matrix leaves paired seeds behind
            for strategy in ("rbla", "zeropad", "rbla-shrink", "flexlora"):
                yield Cell(
                    "rbla-paper", "mnist-rbla", 0.1, strategy, "fixed@160", seed, rounds=100,
                    training=settings, r_max=160, max_ranks=tuple(16 * i for i in range(1, 11)),
                )  # fmt: skip
    elif matrix == "fedsa-paper":
        # FedSA-LoRA: a pretrained encoder (MiniLM) on TREC-6, Dirichlet 0.5, 10 local steps,
        # one rank for every strategy; fedsa-shared-head against fedit is the same head policy
        # too (shared), fedsa (head private) shows what the head policy alone does. Five rounds:
        # a MiniLM client's 10 steps take several seconds on a CPU core (a round ~35 s here).
        for seed in seeds:
            for strategy in ("fedsa-shared-head", "fedit", "fedsa"):
                yield Cell(
                    "fedsa-paper", "trec", 0.5, strategy, "fixed@8", seed, rounds=5,
                    training=(("steps", 10),), r_max=8,
                )  # fmt: skip
    else:
        raise SystemExit(f"unknown matrix {matrix!r}: main, ranks, rbla-paper, fedsa-paper, smoke")


def job_spec(cell: Cell) -> dict[str, Any]:
    """The job spec of a cell: the demo's, with the cell's rank policy and training."""
    from client_sdk.tasks.job_spec import task_job_spec

    spec = task_job_spec(
        cell.task, strategy=cell.strategy, clients=cell.clients, rounds=cell.rounds,
        seed=cell.seed, r_max=cell.r_max, r_min=min(2, cell.r_max),
    )  # fmt: skip
    policy, _, value = cell.rank.partition("@")
    rank: dict[str, Any] = {"policy": policy, "r_min": min(2, cell.r_max), "r_max": cell.r_max}
    if policy == "fixed":
        rank["default_rank"] = int(value)
    elif value:
        rank["budget"] = {"mean_rank": float(value)}
    spec["rank"] = rank
    spec["training"].update(dict(cell.training))
    if "steps" in spec["training"]:
        spec["training"].pop("epochs", None)
    return spec


@dataclass
class Outcome:
    """What one run measured."""

    cell: dict[str, Any]
    status: str
    global_accuracy: list[float] = field(default_factory=list)
    bytes_up: list[int] = field(default_factory=list)
    ranks: list[int] = field(default_factory=list)
    device_accuracy: list[float] = field(default_factory=list)
    wall_seconds: float = 0.0


def run_cell(cell: Cell) -> Outcome:
    """Run one cell through ``flaas demo`` and score the devices' own models at the end."""
    from bench.quality_devices import DeviceScorer
    from server.aggregation import get_strategy
    from server.demo import run_demo

    spec = job_spec(cell)
    scorer = DeviceScorer(cell.task, spec, cell.clients, cell.alpha, cell.seed)
    started = time.monotonic()
    result = run_demo(
        task=cell.task, clients=cell.clients, alpha=cell.alpha, seed=cell.seed,
        spec=spec, out=lambda line: None, on_finished=scorer, max_ranks=cell.max_ranks,
    )  # fmt: skip
    personalised = bool(get_strategy(cell.strategy).private_parts)
    return Outcome(
        cell=asdict(cell),
        status=result.status,
        global_accuracy=[math.nan if personalised else r.accuracy for r in result.rounds],
        bytes_up=[r.bytes_up for r in result.rounds],
        ranks=result.rounds[-1].ranks if result.rounds else [],
        device_accuracy=scorer.accuracies,
        wall_seconds=time.monotonic() - started,
    )


def load_results(path: Path) -> dict[str, dict[str, Any]]:
    """Runs on record, by cell key (the newest wins)."""
    if not path.exists():
        return {}
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {json.dumps(r["cell"], sort_keys=True): r for r in records}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--matrix", default="main", help="main, ranks, rbla-paper, fedsa-paper, smoke"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--tasks", nargs="+", help="run only the matrix's cells of these tasks")
    parser.add_argument(
        "--results", type=Path, default=ROOT / "bench" / "results" / "quality.jsonl"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "quality.md")
    parser.add_argument("--report-only", action="store_true", help="rewrite --out from --results")
    args = parser.parse_args(argv)
    todo = [] if args.report_only else list(cells(args.matrix, tuple(args.seeds)))
    todo = [c for c in todo if args.tasks is None or c.task in args.tasks]
    done = load_results(args.results)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    for i, cell in enumerate(todo, 1):
        if cell.key in done:
            continue
        outcome = run_cell(cell)
        record = asdict(outcome)
        with args.results.open("a") as f:
            f.write(json.dumps(record) + "\n")
        done[cell.key] = record
        final = outcome.global_accuracy[-1] if outcome.global_accuracy else math.nan
        devices = sum(outcome.device_accuracy) / max(len(outcome.device_accuracy), 1)
        print(
            f"[{i}/{len(todo)}] {cell.matrix} {cell.task} a={cell.alpha} {cell.strategy} "
            f"{cell.rank} seed {cell.seed}: {outcome.status}, global {final:.3f}, "
            f"devices {devices:.3f}, {outcome.wall_seconds:.0f} s",
            flush=True,
        )
    write_report(list(done.values()), args.out, args.results.with_name("quality-notes.md"))
    print(f"report: {args.out} ({len(done)} runs on record)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
