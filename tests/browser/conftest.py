"""Fixtures for the browser tests: Debian's Chromium under Playwright, a live coordinator on
SQLite, and a browser context logged in through the dashboard's login form."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import sync_playwright

from tests.live import LiveCoordinator, running_coordinator
from tests.support import OPERATOR_KEY

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's Chromium, installed by scripts/install-chromium.sh when it is missing."""
    if not CHROMIUM.exists():
        result = subprocess.run(
            ["bash", str(ROOT / "scripts" / "install-chromium.sh")],
            capture_output=True,
            text=True,
            timeout=900,
        )
        if result.returncode != 0 or not CHROMIUM.exists():
            message = f"cannot install Chromium:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
            if _in_ci():
                pytest.fail(message)
            pytest.skip(message)
    return CHROMIUM


@pytest.fixture(scope="module")
def driver(chromium: Path) -> Iterator[Any]:
    """Playwright for one test module: its sync API allows one instance at a time, and it
    runs an event loop of its own that no other test should meet."""
    with sync_playwright() as playwright:
        yield playwright


@pytest.fixture(scope="module")
def browser_context(
    driver: Any, chromium: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """A fresh Chromium profile (persistent context in a temporary user-data dir)."""
    context = driver.chromium.launch_persistent_context(
        str(tmp_path_factory.mktemp("chromium-profile")),
        executable_path=str(chromium),
        headless=True,
        args=CHROMIUM_ARGS,
        viewport={"width": 1400, "height": 1000},
    )
    context.set_default_timeout(15_000)
    try:
        yield context
    finally:
        context.close()


@pytest.fixture(scope="module")
def browser(driver: Any, chromium: Path) -> Iterator[Any]:
    """One Chromium whose ``new_context()`` calls are separate devices (storage of their own)."""
    instance = driver.chromium.launch(
        executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS
    )
    try:
        yield instance
    finally:
        instance.close()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveCoordinator]:
    workdir = tmp_path_factory.mktemp("dashboard-live")
    with running_coordinator(f"sqlite:///{workdir / 'flaas.db'}", workdir) as coordinator:
        yield coordinator


@pytest.fixture(scope="module")
def dashboard(browser_context: Any, live: LiveCoordinator) -> Any:
    """A page of a context that logged in with the operator key through the login form."""
    page = browser_context.new_page()
    # Script errors would be silent in a headless browser: keep them for the assertions.
    page.errors = []  # type: ignore[attr-defined]
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    page.on(
        "console",
        lambda message: page.errors.append(message.text) if message.type == "error" else None,
    )
    page.goto(f"{live.url}/dashboard/login")
    page.fill("#operator_key", OPERATOR_KEY)
    page.click("button[type=submit]")
    page.wait_for_url(f"{live.url}/dashboard/jobs")
    return page
