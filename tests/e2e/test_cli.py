"""The `flaas` CLI: zero-configuration `serve`, and job commands against a live coordinator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.live import LiveCoordinator, free_port
from tests.support import OPERATOR_KEY

ROOT = Path(__file__).resolve().parents[2]


def flaas(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_serve_works_with_zero_configuration(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAAS_")}
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and process.poll() is None
                time.sleep(0.2)
        assert ready.status_code == 200
        assert (tmp_path / "flaas-data" / "flaas.db").is_file()
        assert (tmp_path / "flaas-data" / "adapters").is_dir()
    finally:
        process.terminate()
        process.wait(timeout=15)


def test_production_refuses_the_development_key(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAAS_")}
    env["FLAAS_ENVIRONMENT"] = "production"
    result = subprocess.run(
        [sys.executable, "-m", "server.cli", "serve", "--port", str(free_port())],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "development operator key is refused outside development" in result.stderr


def test_job_create_list_show(tmp_path: Path) -> None:
    live = LiveCoordinator(f"sqlite:///{tmp_path / 'cli.db'}", tmp_path)
    live.start()
    try:
        common = ["--server", live.url, "--operator-key", OPERATOR_KEY]
        created = flaas("job", "create", "--file", str(ROOT / "examples" / "job.yaml"), *common)
        assert created.returncode == 0, created.stderr
        job = json.loads(created.stdout)
        assert job["strategy"] == "rbla" and job["join_token"].startswith("flj_")
        listed = flaas("job", "list", *common)
        assert listed.returncode == 0 and job["id"] in listed.stdout
        shown = flaas("job", "show", job["id"], *common)
        assert json.loads(shown.stdout)["spec"]["rank"]["r_max"] == 16
        bad = tmp_path / "bad.yaml"
        bad.write_text("name: x\nbase_model: m\nmodules: {}\n")
        refused = flaas("job", "create", "--file", str(bad), *common)
        assert refused.returncode != 0 and "422" in refused.stderr
        wrong_key = flaas("job", "list", "--server", live.url, "--operator-key", "nope")
        assert wrong_key.returncode != 0 and "401" in wrong_key.stderr
    finally:
        live.stop()


def test_migrate_reports_the_revision(tmp_path: Path) -> None:
    result = flaas("migrate", "--database-url", f"sqlite:///{tmp_path / 'm.db'}")
    assert result.returncode == 0, result.stderr
    assert "database at revision" in result.stdout
