"""One live coordinator (``flaas serve`` on SQLite) for the whole conformance suite: each test
creates jobs of its own on it, so tests share nothing but the process."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.live import LiveCoordinator, running_coordinator

# Small enough for the size limits to be reached with small bodies.
MAX_UPLOAD_BYTES = 1 << 20
MAX_HEADER_BYTES = 1 << 16


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveCoordinator]:
    workdir = tmp_path_factory.mktemp("protocol")
    with running_coordinator(
        f"sqlite:///{workdir / 'flaas.db'}",
        workdir,
        FLAAS_MAX_UPLOAD_BYTES=str(MAX_UPLOAD_BYTES),
        FLAAS_MAX_HEADER_BYTES=str(MAX_HEADER_BYTES),
    ) as coordinator:
        yield coordinator


@pytest.fixture
def http(live: LiveCoordinator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, timeout=60.0) as client:
        yield client
