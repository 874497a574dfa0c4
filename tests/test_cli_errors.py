"""The CLI's operator key, its one-line errors, and the README's table of environment variables."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from server.cli import main
from server.cli_jobs import first_key, is_local, operator_key, progress_line
from server.config import DEVELOPMENT_OPERATOR_KEY, Settings

ROOT = Path(__file__).resolve().parents[1]
DOWN = "http://127.0.0.1:9"  # the discard port: nothing listens there


def test_operator_key_order_and_no_dev_key_for_remote_servers() -> None:
    remote = "https://flaas.example.org"
    assert operator_key("given", remote, {"FLAAS_OPERATOR_KEY": "x"}) == "given"
    both = {"FLAAS_OPERATOR_KEY": "mine", "FLAAS_OPERATOR_KEYS": "a,b"}
    assert operator_key(None, remote, both) == "mine"
    # The README's production export (the variable the coordinator reads) works for the CLI.
    assert operator_key(None, remote, {"FLAAS_OPERATOR_KEYS": " first , second"}) == "first"
    assert operator_key(None, remote, {"FLAAS_OPERATOR_KEYS": '["j1", "j2"]'}) == "j1"
    for local in ("http://127.0.0.1:8000", "http://localhost:8000", "http://[::1]:8000"):
        assert is_local(local)
        assert operator_key(None, local, {}) == DEVELOPMENT_OPERATOR_KEY
    with pytest.raises(SystemExit) as refused:
        operator_key(None, remote, {"FLAAS_OPERATOR_KEYS": " , "})
    assert "no operator key for https://flaas.example.org" in str(refused.value.code)
    assert first_key("") is None and first_key("[1") is None


def test_job_commands_refuse_a_remote_server_without_a_key(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FLAAS_OPERATOR_KEY", raising=False)
    monkeypatch.delenv("FLAAS_OPERATOR_KEYS", raising=False)
    assert main(["job", "list", "--server", "http://flaas.invalid:8000"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no operator key for http://flaas.invalid:8000")
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["job", "list", "--server", DOWN], "cannot reach the coordinator at"),
        (["job", "show", "abc", "--server", DOWN], "cannot reach the coordinator at"),
        (["job", "show", "not-hex!", "--server", DOWN], "is not a job id"),
        (["job", "create", "--file", "/nonexistent/job.yaml"], "cannot read job file"),
        (["job", "list", "--limit", "many"], "invalid int value"),
        (["job", "frobnicate"], "invalid choice"),
        (["client", "join", "--server", DOWN, "--job", "j", "--data", "/no/x.npz"], "no such file"),
    ],
)
def test_expected_failures_print_one_sentence(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own exit, with our one-line message
        code = exc.code  # type: ignore[assignment]
    err = capsys.readouterr().err
    assert code not in (0, None)
    assert expected in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: ")


def test_simulate_against_a_coordinator_that_is_down_says_so_in_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "server.cli", "simulate", "--server", DOWN, "--job", "j"]
        + ["--token", "t", "--clients", "2"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: the coordinator could not be reached")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_job_id_prefixes(monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    import server.cli_jobs as cli_jobs

    ids = ["0a1b" + "0" * 4 + "-0000-4000-8000-" + "0" * 12, "0a1c" + "1" * 4 + "-0000-4000-8000-0"]
    ids[1] += "0" * (36 - len(ids[1]))
    monkeypatch.setattr(cli_jobs, "_all_jobs", lambda args: iter({"id": i} for i in ids))
    args = argparse.Namespace()
    assert cli_jobs.resolve_job_id(args, "0A1B") == ids[0]
    assert cli_jobs.resolve_job_id(args, ids[1].upper()) == ids[1]  # a full id: no listing
    for given, said in (("0a1", "is ambiguous: 2 job ids start with it"), ("0a2", "no job id")):
        with pytest.raises(SystemExit) as refused:
            cli_jobs.resolve_job_id(args, given)
        assert said in str(refused.value.code)


def test_progress_line_bar() -> None:
    event = {"status": "running", "current_round": 3, "total_rounds": 10, "ended": False}
    line = progress_line({**event, "round_status": "open", "accepted": 2})
    assert line.startswith("[" + "#" * 6 + "." * 24 + "] 2/10 rounds")
    assert "round 3/10 open, 2 update(s) accepted" in line
    done = progress_line({**event, "status": "finished", "current_round": 10, "ended": True})
    assert "10/10 rounds" in done and "#" * 30 in done
    assert "enrolment open" in progress_line({**event, "status": "enrolling", "current_round": 0})


# An environment read in the code: os.environ.get("FLAAS_X"), os.environ["FLAAS_X"], getenv.
_READ = re.compile(r"""(?:environ(?:\.get)?\(?\[?|getenv\()\s*["'](FLAAS_[A-Z0-9_]+)["']""")


def _readme_table_variables() -> set[str]:
    text = (ROOT / "README.md").read_text()
    table = text[text.index("| variable | default | meaning |") :].split("\n\n", 1)[0]
    names: set[str] = set()
    for row in table.splitlines()[2:]:
        names.update(re.findall(r"`(FLAAS_[A-Z0-9_]+)`", row.split("|")[1]))
    return names


def test_every_environment_variable_the_code_reads_is_in_the_readme_table() -> None:
    read = {
        name
        for folder in ("server", "client_sdk")
        for path in (ROOT / folder).rglob("*.py")
        for name in _READ.findall(path.read_text())
    }
    prefix = Settings.model_config.get("env_prefix", "")
    read |= {f"{prefix}{field}".upper() for field in Settings.model_fields}
    assert {"FLAAS_SERVER", "FLAAS_OPERATOR_KEY", "FLAAS_DATABASE_URL"} <= read  # the grep works
    missing = sorted(read - _readme_table_variables())
    assert not missing, f"not in the README's environment table: {missing}"


def test_error_sentences_of_the_expected_kinds() -> None:
    import httpx
    from pydantic import ValidationError

    from client_sdk.api import Unauthorized, Unavailable
    from client_sdk.cli_errors import error_sentence

    with pytest.raises(ValidationError) as invalid:
        Settings(request_threads="abc")  # type: ignore[arg-type]
    assert error_sentence(invalid.value) == (
        "invalid Settings: request_threads: Input should be a valid integer, unable to parse "
        "string as an integer"
    )
    with pytest.raises(ValidationError) as refused:
        Settings(environment="production")
    assert error_sentence(refused.value) == (
        "invalid Settings: the development operator key is refused outside development: "
        "set FLAAS_OPERATOR_KEYS to your own secret(s)"
    )
    assert error_sentence(Unauthorized(401, "invalid join token", "GET", "/x")) == (
        "401: invalid join token"
    )
    assert error_sentence(Unavailable("GET x failed 3 times;\nlast: refused")) == (
        "the coordinator could not be reached: GET x failed 3 times; last: refused"
    )
    request = httpx.Request("GET", "http://127.0.0.1:9/x")
    assert error_sentence(httpx.ConnectError("refused", request=request)) == (
        "cannot reach http://127.0.0.1:9/x: refused"
    )
    assert error_sentence(FileNotFoundError(2, "No such file or directory", "a.npz")) == (
        "a.npz: No such file or directory"
    )
    assert error_sentence(ModuleNotFoundError("no torch", name="torch")).startswith(
        "torch is not installed"
    )
    assert error_sentence(RuntimeError("a bug")) is None  # keeps its traceback
