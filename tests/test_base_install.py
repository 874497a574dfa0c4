"""The base distribution is the thin client: it installs and imports without the server stack."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("fastapi", "sqlalchemy", "celery", "torch", "alembic", "uvicorn")


@pytest.mark.slow
def test_base_install_imports_client_sdk_without_server_dependencies(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "-q",
            "-c",
            str(ROOT / "constraints.txt"),
            "-e",
            str(ROOT),
        ],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    for package in HEAVY:
        found = subprocess.run([str(python), "-c", f"import {package}"], capture_output=True)
        assert found.returncode != 0, f"{package} must not be installed by the base distribution"
    imported = subprocess.run(
        [str(python), "-c", "import client_sdk, sys; print(sorted(sys.modules))"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert imported.returncode == 0, imported.stderr
    help_text = subprocess.run(
        [str(venv / "bin" / "flaas"), "--help"], capture_output=True, text=True, cwd=tmp_path
    )
    assert help_text.returncode == 0, help_text.stderr
    assert "serve" in help_text.stdout
    for command, expected in (
        (["client", "--help"], "join"),
        (["client", "join", "--help"], "--data"),
    ):
        client_help = subprocess.run(
            [str(venv / "bin" / "flaas"), *command], capture_output=True, text=True, cwd=tmp_path
        )
        assert client_help.returncode == 0, client_help.stderr
        assert expected in client_help.stdout
    # The SDK's HTTP client and loop import (and construct) without torch.
    sdk = subprocess.run(
        [
            str(python),
            "-c",
            "import sys; from client_sdk import Client, profile; "
            "Client('http://127.0.0.1:9', 'job', state_dir='state'); "
            "assert 'torch' not in sys.modules, 'torch imported'",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert sdk.returncode == 0, sdk.stderr
