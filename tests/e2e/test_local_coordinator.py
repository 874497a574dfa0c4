"""``LocalCoordinator``: ``flaas serve`` in a child process, as ``flaas demo`` runs it."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from server.local_coordinator import LocalCoordinator

pytestmark = pytest.mark.slow


def _refuses(url: str, within_s: float) -> bool:
    """Whether ``url`` stops accepting connections within ``within_s``."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1.0)
        except httpx.ConnectError:
            return True
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return False


def test_it_serves_the_api_with_its_operator_key_and_is_gone_after_the_block(
    tmp_path: Path,
) -> None:
    with LocalCoordinator(tmp_path) as coordinator, coordinator.operator() as http:
        assert http.get("/api/v1/jobs").status_code == 200
        assert httpx.get(f"{coordinator.url}/api/v1/jobs").status_code == 401
    assert (tmp_path / "flaas.db").exists()
    assert _refuses(f"{coordinator.url}/healthz", within_s=1.0)


def test_a_coordinator_that_cannot_start_is_an_error_at_once(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        coordinator = LocalCoordinator(tmp_path, port=taken.getsockname()[1])
        started = time.monotonic()
        with pytest.raises(RuntimeError, match="exited with code"), coordinator:
            pass
    assert time.monotonic() - started < 30  # not the start timeout


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
def test_a_killed_parent_leaves_no_coordinator_behind(tmp_path: Path) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", (
            "import sys, time; from pathlib import Path\n"
            "from server.local_coordinator import LocalCoordinator\n"
            "c = LocalCoordinator(Path(sys.argv[1])).start().wait_ready()\n"
            "print(c.url, flush=True); time.sleep(600)"
        ), str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    assert parent.stdout is not None
    url = parent.stdout.readline().strip()
    assert httpx.get(f"{url}/healthz").status_code == 200
    parent.kill()  # no __exit__, no stop(): only the kernel can tell the child
    parent.wait()
    assert _refuses(f"{url}/healthz", within_s=15.0)
