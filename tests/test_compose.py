"""docker-compose.yml, the Dockerfile and .dockerignore: pinned, secret-free, one port.

The structural checks run everywhere; ``docker compose config`` runs where a docker CLI with
the compose plugin is installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|_KEYS?$|ACCESS_KEY")
REFERENCE = re.compile(r"^\$\{[A-Z0-9_]+(:?[-?][^}]*)?\}$")
URL_PASSWORD = re.compile(r"://[^:/@\s]+:([^@\s]+)@")
ONE_SHOT = {"minio-bucket"}  # runs once and exits (coordinator waits for it to complete)
FLAAS = ("coordinator", "worker", "beat")  # the containers of the flaas image


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def test_every_image_is_pinned_to_a_tag_that_is_not_latest() -> None:
    for name, service in _compose()["services"].items():
        image = service.get("image")
        assert image, f"{name} names no image"
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag, f"{name}: {image} has no tag"
        assert tag != "latest", f"{name}: {image} is not pinned"


def test_only_the_coordinator_publishes_ports() -> None:
    published = {n for n, s in _compose()["services"].items() if s.get("ports")}
    assert published == {"coordinator"}
    assert _compose()["services"]["coordinator"]["ports"] == ["8000:8000"]
    minio = _compose()["services"]["minio"]
    assert "--console-address" not in minio["command"] and minio["environment"]["MINIO_BROWSER"]


def test_metrics_samples_and_scrape_ports() -> None:
    services = _compose()["services"]
    for name in FLAAS:
        service = services[name]
        samples = service["environment"]["PROMETHEUS_MULTIPROC_DIR"]
        assert samples in service["tmpfs"], f"{name}: its sample directory is no tmpfs of its own"
        assert service["environment"]["FLAAS_METRICS_TOKEN"] == "${FLAAS_METRICS_TOKEN:-}"
    worker = services["worker"]
    command = worker["command"]
    assert command[command.index("--metrics-port") + 1] == "9100"
    assert worker["expose"] == ["9100"]  # on the compose network (only the coordinator publishes)
    example = (ROOT / ".env.example").read_text().splitlines()
    assert "FLAAS_METRICS_TOKEN=" in example


def test_every_service_has_a_healthcheck() -> None:
    services = _compose()["services"]
    for name, service in services.items():
        check = service.get("healthcheck")
        assert check and check.get("test"), f"{name} has no healthcheck"
        assert not check.get("disable"), name
    long_running = set(services) - ONE_SHOT
    assert {"postgres", "redis", "minio", "coordinator", "worker", "beat"} <= long_running


def test_no_literal_secrets() -> None:
    compose = _compose()
    blocks = [compose.get("x-flaas-env", {})] + [
        s.get("environment", {}) for s in compose["services"].values()
    ]
    for environment in blocks:
        assert isinstance(environment, dict), "environment as a mapping, so it can be checked"
        for key, value in environment.items():
            if SECRET_NAME.search(key):
                assert REFERENCE.match(str(value)), f"{key} holds a literal value: {value!r}"
    for text in _strings(compose):
        for password in URL_PASSWORD.findall(text):
            assert REFERENCE.match(password), f"a literal password in {text!r}"
    for old in ("flaas-db-password", "flaas-minio-secret"):
        assert old not in COMPOSE.read_text()


def _required_variables() -> set[str]:
    return set(re.findall(r"\$\{([A-Z0-9_]+):\?", COMPOSE.read_text()))


def test_the_env_example_names_every_required_variable_and_holds_no_secret() -> None:
    example = (ROOT / ".env.example").read_text()
    values = dict(
        line.split("=", 1) for line in example.splitlines() if line and not line.startswith("#")
    )
    assert _required_variables() <= set(values)
    for key, value in values.items():
        if SECRET_NAME.search(key):
            assert value == "", f".env.example must not ship a value for {key}"
    assert ".env" in (ROOT / ".gitignore").read_text().split()


def test_the_build_context_and_the_torch_install() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".venv", "flaas-data", ".git", "**/__pycache__", ".pytest_cache", ".env"):
        assert entry in ignored, entry
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "--index-url" not in dockerfile  # PyPI, not another index in place of it
    assert 'pip install -c constraints.txt ".[server]"' in dockerfile
    build = _compose()["x-flaas-build"]
    assert build["dockerfile"] == "Dockerfile" and "dockerfile_inline" not in build


def _compose_plugin() -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    found = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30)
    return found.returncode == 0


@pytest.mark.skipif(not _compose_plugin(), reason="no docker CLI with the compose plugin")
def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    env = tmp_path / "compose.env"
    env.write_text(
        "".join(f"{name}=x-{name.lower()}-0123456789\n" for name in _required_variables())
    )
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "--env-file", str(env), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    missing = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "--env-file", "/dev/null", "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode != 0 and "in .env" in missing.stderr
