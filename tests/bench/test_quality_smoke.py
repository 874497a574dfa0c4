"""bench/quality.py end to end on its smoke matrix: real runs, a report, and a resume."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(results: Path, report: Path) -> str:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "quality.py"), "--matrix", "smoke",
         "--results", str(results), "--out", str(report)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_the_smoke_matrix_runs_reports_and_resumes(tmp_path: Path) -> None:
    results, report = tmp_path / "quality.jsonl", tmp_path / "quality.md"
    first = _run(results, report)
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["cell"]["strategy"] for r in records] == ["rbla-shrink", "fedsa"]
    assert all(r["status"] == "finished" for r in records)
    shrink, fedsa = records
    assert len(shrink["global_accuracy"]) == shrink["cell"]["rounds"]
    assert 0.0 < shrink["global_accuracy"][-1] <= 1.0
    # FedSA has no global model; every strategy is scored on the devices' own models.
    assert len(fedsa["device_accuracy"]) == fedsa["cell"]["clients"]
    assert all(0.0 <= a <= 1.0 for r in records for a in r["device_accuracy"])
    text = report.read_text()
    assert "## Smoke run (CI)" in text and "| rbla-shrink |" in text and "| fedsa |" in text
    assert "[1/2]" in first
    # A second run finds both cells on record: nothing is trained again.
    second = _run(results, report)
    assert "[1/2]" not in second and "2 runs on record" in second
    assert len(results.read_text().splitlines()) == 2
