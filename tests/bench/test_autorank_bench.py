"""bench/autorank.py end to end: real SDK statistics, both references, the figures it prints."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from bench.autorank import spearman

ROOT = Path(__file__).resolve().parents[2]


def test_spearman_matches_the_textbook_cases() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    assert abs(spearman([1, 2, 2, 3], [1, 2, 3, 4]) - 0.9486832980505138) < 1e-12  # ties


def test_iid_shards_get_one_rank_under_bounds_and_the_ends_under_cohort() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "autorank.py")],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    iid = done.stdout.split("(b)")[0]
    rows = re.findall(
        r"^\s+\d+\s+\d+\s+[\d.]+\s+[\d.]+\s+[\d.]+ \|\s+(\d+)\s+(\d+)\s+(\d+)$", iid, re.M
    )
    assert len(rows) == 3
    cohort, bounds, budget = ([int(r[i]) for r in rows] for i in range(3))
    assert min(cohort) == 2 and max(cohort) == 16
    assert len(set(bounds)) == 1 and len(set(budget)) == 1 and budget[0] <= 6
    assert re.search(r"Spearman\(n, rank\): cohort [\d.]+, bounds [\d.]+", done.stdout)
