"""Running Node on the committed browser bundle (server/join/static/flaas-client.js).

Node is needed: a test skips without it locally, and fails in CI (``CI=true``), where it must run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "frontend" / "client"
STATIC = ROOT / "server" / "join" / "static"
BUNDLE = STATIC / "flaas-client.js"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require(tool: str) -> str:
    """The path of ``tool`` (node, npm); a skip without it locally, a failure in CI."""
    path = shutil.which(tool)
    if path is None:
        if in_ci():
            pytest.fail(f"{tool} is required in CI (the browser client's tests) but not on PATH")
        pytest.skip(f"{tool} is not installed")
    return path


def run_module(body: str, **values: Any) -> Any:
    """Run ``body`` (an async ES-module body with ``client``, the bundle's exports, and
    ``input``, ``values`` as JSON, in scope) in Node; returns what it ``console.log``s last, as
    JSON."""
    node = require("node")
    script = (
        f"const client = await import({json.dumps(BUNDLE.as_uri())});\n"
        f"const input = {json.dumps(values)};\n{body}\n"
    )
    done = subprocess.run(
        [node, "--input-type=module", "-e", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])
