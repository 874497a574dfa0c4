"""The committed bundle is the build of frontend/client/src, and the client's own unit tests
(Node's test runner) pass. Both need the build tools scripts/setup.sh installs (npm ci)."""

from __future__ import annotations

import subprocess

import pytest

from tests.web_client.node import CLIENT, in_ci, require


@pytest.fixture(scope="module")
def npm() -> str:
    path = require("npm")
    if not (CLIENT / "node_modules" / "esbuild").is_dir():
        if in_ci():
            pytest.fail("frontend/client/node_modules is missing: scripts/setup.sh runs npm ci")
        pytest.skip("no frontend/client/node_modules (run npm ci in frontend/client)")
    return path


def npm_run(npm: str, script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [npm, "run", "--silent", script], cwd=CLIENT, capture_output=True, text=True, timeout=300
    )


def test_the_committed_bundle_is_the_build_of_the_sources(npm: str) -> None:
    done = npm_run(npm, "check")
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_client_unit_tests_pass(npm: str) -> None:
    done = npm_run(npm, "test")
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "# fail 0" in done.stdout
