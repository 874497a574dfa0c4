"""``flaas demo``: one command runs a coordinator, a job and its clients, and reports."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from client_sdk.tasks import register_task
from server.cli import build_parser
from tests.user_task import DoubledDigits, forget_registrations

pytestmark = pytest.mark.slow


def test_demo_command_runs_a_job_to_the_end_and_prints_rounds_and_a_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = build_parser().parse_args(
        ["demo", "--clients", "4", "--rounds", "3", "--data-dir", str(tmp_path)]
    )
    assert args.handler(args) == 0
    out = capsys.readouterr().out
    assert re.search(r"^dashboard +http://127\.0\.0\.1:\d+/dashboard", out, re.M), out
    rounds = re.findall(r"^round +(\d+) +4 clients +ranks \d+-\d+ +accuracy 0\.\d+ ", out, re.M)
    assert rounds == ["1", "2", "3"], out
    assert "strategy         rbla-shrink  (job finished)" in out
    assert len(re.findall(r"^sim-00\d +\d+ +\d+ +3$", out, re.M)) == 4, out  # per-client table
    found = re.search(r"^accuracy +(0\.\d+) untrained -> (0\.\d+) final", out, re.M)
    assert found is not None, out
    assert float(found[2]) > float(found[1]) + 0.2
    assert (tmp_path / "flaas.db").exists()


def test_demo_command_runs_a_task_that_user_code_registered(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    forget_registrations(monkeypatch)
    register_task("digits-doubled", DoubledDigits)
    args = build_parser().parse_args(
        ["demo", "--task", "digits-doubled", "--clients", "2", "--rounds", "1",
         "--data-dir", str(tmp_path)]
    )  # fmt: skip
    assert args.handler(args) == 0
    out = capsys.readouterr().out
    assert re.search(r"^job +\S+: digits-doubled, rbla-shrink, 2 clients, 1 rounds", out, re.M), out
    assert "strategy         rbla-shrink  (job finished)" in out
