"""The shipped example job and the README's commands that run it fit each other."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_the_example_job_starts_with_the_clients_the_readme_runs() -> None:
    spec = yaml.safe_load((ROOT / "examples" / "job.yaml").read_text())
    enrolment = spec["enrolment"]
    texts = (ROOT / "README.md").read_text() + (ROOT / "examples" / "job.yaml").read_text()
    counts = [int(n) for n in re.findall(r"flaas simulate [^\n`]*--clients (\d+)", texts)]
    assert counts, "the README shows how to run simulated clients"
    for n in counts:  # each command's cohort starts the job at once (its target), not never
        assert enrolment["min_clients"] <= n and enrolment["target_clients"] == n, n
    readme_line = f"enrolment: {{min_clients: {enrolment['min_clients']}, target_clients: "
    assert readme_line + f"{enrolment['target_clients']}, timeout_s: " in texts
