"""AutoRank's rank assignments on real client data: the cohort reference against the bounds one.

Run: ``.venv/bin/python bench/autorank.py`` (CPU, about a minute). Each client's statistics
are what the SDK uploads at enrolment (``LoraRound.stats``: labels plus one loss pass of the
initial global model, the random-base digits MLP); ranks come from the same code the coordinator
runs, under the job spec's defaults (r_min 2, r_max 16, no grid) and ``rank.reference`` set to
"cohort" (the behaviour before the bounds reference) or "bounds".

(a) three IID shards of digits (Dirichlet alpha = 1000): alike clients should get alike ranks.
(b) a Dirichlet 0.1 label split of digits over 10 clients: Spearman's rho between a client's
    sample count and its rank (and the ranks), for both references. ``--budget`` adds a run
    with ``rank.budget.mean_rank``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from server.autorank import assign_ranks, mean_rank_budget
from server.schemas.job_spec import RankPolicy
from server.services.ranking import CRITERIA, reference_of


def client_stats(alpha: float, clients: int, seed: int) -> list[dict[str, Any]]:
    """The enrolment statistics of ``clients`` digits shards (Dirichlet ``alpha``)."""
    import torch

    from client_sdk.lora_round import LoraRound
    from client_sdk.simulate import make_shards
    from client_sdk.tasks import get_task
    from client_sdk.trainer import LoraTrainer

    torch.set_num_threads(1)
    task = get_task("digits")
    data = task.load(seed=0)
    shards = make_shards(data.y_train, data.x_train, clients, alpha, seed=seed)
    model = task.model_spec()
    return [
        LoraRound(LoraTrainer(model), task.dataset(s.x_train, s.y_train)).stats().as_dict()
        for s in shards
    ]


def ranks_for(
    stats: Sequence[dict[str, Any]], reference: str, mean_rank: float | None = None
) -> list[int]:
    policy = RankPolicy(reference=reference)  # type: ignore[arg-type]
    matrix = [[s[c] if s[c] is not None else float("nan") for c in CRITERIA] for s in stats]
    budget = None if mean_rank is None else mean_rank_budget(mean_rank)
    out = assign_ranks(
        matrix,
        policy.r_min,
        policy.r_max,
        grid=policy.grid,
        default=policy.default,
        reference=reference_of(policy),
        budget=budget,
    )
    return out.ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rho with average ranks for ties (Pearson on the ranks)."""

    def ranks(x: Sequence[float]) -> np.ndarray:
        v = np.asarray(x, dtype=np.float64)
        order = np.argsort(v, kind="stable")
        r = np.empty(v.size)
        r[order] = np.arange(v.size, dtype=np.float64)
        for value in np.unique(v):  # ties share their mean rank
            tied = v == value
            r[tied] = r[tied].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")  # undefined: printed as "n/a (equal ranks)"
    return float(np.corrcoef(ra, rb)[0, 1])


def show(title: str, stats: Sequence[dict[str, Any]], budget: float | None) -> None:
    print(title)
    print("  client  n_samples  label_H  gini   loss_H | cohort  bounds" + (
        f"  bounds@{budget:g}" if budget else ""
    ))  # fmt: skip
    cohort, bounds = ranks_for(stats, "cohort"), ranks_for(stats, "bounds")
    spent = ranks_for(stats, "bounds", budget) if budget else None
    for i, s in enumerate(stats):
        extra = f"  {spent[i]:9d}" if spent else ""
        print(
            f"  {i:6d}  {s['n_samples']:9d}  {s['label_entropy']:7.3f}  {s['gini_simpson']:5.3f}"
            f"  {s['loss_entropy']:6.3f} | {cohort[i]:6d}  {bounds[i]:6d}{extra}"
        )
    n = [s["n_samples"] for s in stats]

    def rho(ranks: Sequence[int]) -> str:
        value = spearman(n, ranks)
        return "n/a (equal ranks)" if np.isnan(value) else f"{value:.2f}"

    line = f"  Spearman(n, rank): cohort {rho(cohort)}, bounds {rho(bounds)}"
    if spent:
        line += f", bounds@{budget:g} {rho(spent)} (mean {np.mean(spent):.2f})"
    print(line)
    print(f"  mean rank: cohort {np.mean(cohort):.2f}, bounds {np.mean(bounds):.2f}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget", type=float, default=6.0, help="mean rank (0: none)")
    args = parser.parse_args(argv)
    budget = args.budget or None
    show("(a) digits, 3 IID shards (Dirichlet 1000)", client_stats(1000.0, 3, args.seed), budget)
    show("(b) digits, Dirichlet 0.1, 10 clients", client_stats(0.1, 10, args.seed), budget)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
