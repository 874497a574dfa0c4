"""``docs/quality.md`` from the quality benchmark's runs (bench/quality.py)."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

Record = dict[str, Any]
CANDIDATE = "rbla-shrink"

PROTOCOL = """\
# Quality: strategies and rank policies, measured

Written by `bench/quality.py` from the runs in `bench/results/quality.jsonl`; rerun it to
reproduce (same seeds, same numbers: runs are reproducible, see docs/algorithms.md).

**Protocol.** Every run is one `flaas demo`: the embedded coordinator, a job created over REST,
simulated SDK clients that train with torch + peft and upload over HTTP. The built-in task's
training pool is cut into one shard per client with a Dirichlet(α) label skew (seeded by the
run's seed, which is also the job's seed); 20 % of each shard is the client's validation data.
AutoRank assigns ranks in [2, 16] unless the rank column says otherwise; LoRA scale 2 at every
rank; one local epoch per round (Adam, the task's learning rate, batch 16); every client takes
part in every round. `-random` marks the frozen random base (the RBLA paper's setting), the
other rows adapt the base pretrained on the task's public split (docs/algorithms.md).

* **global**: the round's global adapter (rank R) on the task's held-out test set (360 digits
  images, 1,000 MNIST images), at round 5, 10 and the final round; mean ± std over seeds.
* **to 90 %**: the first round whose global accuracy reaches 90 % of that run's final one.
* **devices**: each device's own model after the last round (the final global adapter cut to
  its rank, with the tensors it kept private) on the whole test set, each class weighted by its
  share of the device's training labels; mean over devices, then mean ± std over seeds. The same
  protocol for every strategy, FedSA included.
* **KiB up**: bytes uploaded per round by all clients.
* **paired**: per seed, candidate minus rival on the final global accuracy (same split, same
  ranks); mean ± standard error of the paired differences, and the seeds the candidate won.
"""


def _mean_std(values: Sequence[float]) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"


def _at(record: Record, number: int) -> float:
    accuracy = record["global_accuracy"]
    return accuracy[number - 1] if len(accuracy) >= number else math.nan


def _final(record: Record) -> float:
    return record["global_accuracy"][-1] if record["global_accuracy"] else math.nan


def _to_90(record: Record) -> float:
    accuracy, final = record["global_accuracy"], _final(record)
    if math.isnan(final):
        return math.nan
    return float(next(i for i, a in enumerate(accuracy, 1) if a >= 0.9 * final))


def _devices(record: Record) -> float:
    values = record["device_accuracy"]
    return statistics.fmean(values) if values else math.nan


def _kib(record: Record) -> float:
    return statistics.fmean(record["bytes_up"]) / 1024 if record["bytes_up"] else math.nan


def _group(records: Sequence[Record], *fields: str) -> dict[tuple[Any, ...], list[Record]]:
    groups: dict[tuple[Any, ...], list[Record]] = defaultdict(list)
    for record in records:
        groups[tuple(record["cell"][f] for f in fields)].append(record)
    return groups


def _table(rows: dict[str, list[Record]], label: str) -> list[str]:
    columns: list[tuple[str, Callable[[Record], float], bool]] = [
        ("global, round 5", lambda r: _at(r, 5), True),
        ("round 10", lambda r: _at(r, 10), True),
        ("final", _final, True),
        ("to 90 %", _to_90, False),
        ("devices", _devices, True),
        ("KiB up", _kib, False),
    ]
    lines = [
        f"| {label} | " + " | ".join(c[0] for c in columns) + " | seeds |",
        "|---|" + "---|" * (len(columns) + 1),
    ]
    for name, runs in rows.items():
        cells = []
        for _, value, precise in columns:
            values = [value(r) for r in runs]
            if precise:
                cells.append(_mean_std(values))
            else:
                kept = [v for v in values if not math.isnan(v)]
                cells.append(f"{statistics.median(kept):.0f}" if kept else "–")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {len(runs)} |")
    return lines


def paired(
    candidate: list[Record], rival: list[Record], score: Callable[[Record], float] = _final
) -> tuple[float, float, int, int]:
    """(mean, standard error, wins, n) of the per-seed differences of ``score`` (by default
    the final global accuracy)."""
    mine = {r["cell"]["seed"]: score(r) for r in candidate}
    theirs = {r["cell"]["seed"]: score(r) for r in rival}
    diffs = [mine[s] - theirs[s] for s in sorted(mine.keys() & theirs.keys())]
    diffs = [d for d in diffs if not math.isnan(d)]
    if not diffs:
        return math.nan, math.nan, 0, 0
    se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else math.nan
    return statistics.fmean(diffs), se, sum(d > 0 for d in diffs), len(diffs)


# What a section's paired table scores: global accuracy, or (for strategies without a global
# model, the FedSA family) the devices' own models.
SCORES: dict[str, tuple[str, Callable[[Record], float]]] = {
    "final": ("final global", _final),
    "devices": ("devices", _devices),
}


def _paired_lines(by_strategy: dict[str, list[Record]], candidate: str, score: str) -> list[str]:
    if candidate not in by_strategy:
        return []
    label, scorer = SCORES[score]
    lines = [f"| {candidate} minus | {label} (mean ± SE) | seeds won |", "|---|---|---|"]
    for rival, runs in by_strategy.items():
        if rival == candidate:
            continue
        mean, se, wins, n = paired(by_strategy[candidate], runs, scorer)
        if n:
            lines.append(f"| {rival} | {mean:+.3f} ± {se:.3f} | {wins} of {n} |")
    return lines if len(lines) > 2 else []


def _budget_lines(by_rank: dict[str, list[Record]]) -> list[str]:
    """AutoRank spending a mean-rank budget against that fixed rank for every device."""
    lines = ["| AutoRank minus fixed, same mean rank | final global (mean ± SE) | seeds won |"]
    lines.append("|---|---|---|")
    for name, runs in by_rank.items():
        fixed = by_rank.get(name.replace("autorank@", "fixed@"))
        if name.startswith("autorank@") and fixed:
            mean, se, wins, n = paired(runs, fixed)
            lines.append(f"| {name.partition('@')[2]} | {mean:+.3f} ± {se:.3f} | {wins} of {n} |")
    return lines if len(lines) > 2 else []


def _section(
    title: str,
    groups: dict[tuple[Any, ...], list[Record]],
    field: str,
    candidate: str = CANDIDATE,
    score: str = "final",
) -> list[str]:
    lines = [f"## {title}", ""]
    for key, runs in sorted(groups.items(), key=lambda kv: str(kv[0])):
        rows = _group(runs, field)
        named = {str(k[0]): v for k, v in sorted(rows.items(), key=lambda kv: str(kv[0]))}
        lines += [f"### {', '.join(str(k) for k in key)}", "", *_table(named, field), ""]
        if field == "strategy":
            lines += [*_paired_lines(named, candidate, score), ""]
        elif field == "rank":
            lines += [*_budget_lines(named), ""]
    return lines


def verdict(records: Sequence[Record], rivals: Sequence[str]) -> list[str]:
    """The default's target, cell by cell: the candidate's final global accuracy is at least
    the best rival's within one paired standard error in every cell, and above each rival
    (paired mean > 0) in at least half the cells."""
    cells = _group(records, "task", "alpha", "rank")
    lines = [
        f"| cell | best rival | {CANDIDATE} minus best (± SE) | within 1 SE | above "
        + ", ".join(rivals)
        + " |",
        "|---|---|---|---|---|",
    ]
    above = dict.fromkeys(rivals, 0)
    every_cell_ok, n_cells = True, 0
    for key, runs in sorted(cells.items(), key=lambda kv: str(kv[0])):
        by = {k[0]: v for k, v in _group(runs, "strategy").items()}
        if CANDIDATE not in by or not all(r in by for r in rivals):
            continue
        n_cells += 1
        best = max(rivals, key=lambda r: statistics.fmean(_final(x) for x in by[r]))
        mean, se, _, _ = paired(by[CANDIDATE], by[best])
        ok = mean >= -(se if not math.isnan(se) else 0.0)
        every_cell_ok &= ok
        wins = []
        for rival in rivals:
            if paired(by[CANDIDATE], by[rival])[0] > 0:
                above[rival] += 1
                wins.append(rival)
        lines.append(
            f"| {', '.join(str(k) for k in key)} | {best} | {mean:+.3f} ± {se:.3f} | "
            f"{'yes' if ok else 'no'} | {', '.join(wins) or '–'} |"
        )
    if not n_cells:
        return []
    half = all(2 * above[r] >= n_cells for r in rivals)
    met = every_cell_ok and half
    lines += [
        "",
        f"Target {'met' if met else 'not met'} on {n_cells} cells: within one paired SE of the "
        f"best rival in {'every' if every_cell_ok else 'not every'} cell; above "
        + ", ".join(f"{r} in {above[r]}" for r in rivals)
        + ".",
    ]
    return lines


def standings(records: Sequence[Record], strategies: Sequence[str]) -> list[str]:
    """Every strategy against each cell's best (by mean final global accuracy): its mean final
    accuracy over the cells, and in how many cells it is within one paired SE of the best.
    When no strategy meets the target, the default is the one this table puts first."""
    cells = [
        {k[0]: v for k, v in _group(runs, "strategy").items()}
        for _, runs in sorted(_group(records, "task", "alpha", "rank").items(), key=str)
    ]
    cells = [by for by in cells if all(s in by for s in strategies)]
    if not cells:
        return []
    rows = []
    for strategy in strategies:
        finals, close = [], 0
        for by in cells:
            best = max(strategies, key=lambda r: statistics.fmean(_final(x) for x in by[r]))
            finals.append(statistics.fmean(_final(x) for x in by[strategy]))
            mean, se, _, _ = paired(by[strategy], by[best])
            close += strategy == best or mean >= -(se if not math.isnan(se) else 0.0)
        rows.append((statistics.fmean(finals), close, strategy))
    lines = [
        "| strategy | mean final global over the cells | cells within 1 paired SE of the best |",
        "|---|---|---|",
    ]
    for mean, close, strategy in sorted(rows, reverse=True):
        lines.append(f"| {strategy} | {mean:.3f} | {close} of {len(cells)} |")
    return lines


class Section(NamedTuple):
    """A matrix's part of the report: rows grouped by ``keys``, one line per ``field`` value,
    and ``candidate`` paired against the others on ``score`` (a key of ``SCORES``)."""

    title: str
    keys: tuple[str, ...]
    field: str
    candidate: str = CANDIDATE
    score: str = "final"


CELL = ("task", "alpha", "rank")
SECTIONS = {
    "main": Section("Strategies, AutoRank ranks", CELL, "strategy"),
    "ranks": Section("Rank policies at equal budgets (rbla-shrink)", ("task", "alpha"), "rank"),
    "rbla-paper": Section("The RBLA paper's protocol", CELL, "strategy"),
    "fedsa-paper": Section(
        "The FedSA-LoRA paper's protocol", CELL, "strategy", "fedsa-shared-head", "devices"
    ),
    "smoke": Section("Smoke run (CI)", CELL, "strategy"),
}


def write_report(records: Sequence[Record], out: Path, notes: Path | None = None) -> None:
    """Write the whole report: protocol, one section per matrix on record, the verdict, then
    the hand-written findings in ``notes`` (when the file exists)."""
    finished = [r for r in records if r["status"] == "finished"]
    by_matrix = _group(finished, "matrix")
    lines = [PROTOCOL]
    for matrix, section in SECTIONS.items():
        runs = by_matrix.get((matrix,))
        if runs:
            groups = _group(runs, *section.keys)
            lines += _section(
                section.title, groups, section.field, section.candidate, section.score
            )
    main = by_matrix.get(("main",))
    if main:
        lines += ["## Verdict: is rbla-shrink the default?", ""]
        lines += [*verdict(main, ("rbla", "zeropad", "flexlora")), ""]
        lines += [*standings(main, sorted({r["cell"]["strategy"] for r in main})), ""]
    failed = len(records) - len(finished)
    if failed:
        lines += [f"{failed} run(s) did not finish and are left out of the tables.", ""]
    if notes is not None and notes.exists():
        lines += [notes.read_text().strip(), ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines).rstrip() + "\n")
