"""The vendored browser assets (dashboard, API reference) match frontend/vendor.lock, and ship
inside the package."""

from __future__ import annotations

import hashlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVER = ROOT / "server"
STATIC = SERVER / "dashboard" / "static"


def test_vendored_files_match_the_lock() -> None:
    lines = (ROOT / "frontend" / "vendor.lock").read_text().splitlines()
    entries = [line.split() for line in lines if line and not line.startswith("#")]
    assert {name for _, _, name, _ in entries} >= {
        "dashboard/static/vendor/uPlot.iife.min.js",
        "dashboard/static/vendor/uPlot.min.css",
        "api/static/swagger-ui/swagger-ui-bundle.js",
        "api/static/swagger-ui/swagger-ui.css",
    }
    for package, version, name, sha256 in entries:
        data = (SERVER / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == sha256, f"{package}@{version} {name} changed"


def test_pages_reference_only_files_that_exist() -> None:
    for page in ("app.html", "login.html"):
        html = (STATIC / page).read_text()
        for ref in ("/dashboard/static/dashboard.css",):
            assert ref in html
        for part in html.split('"/dashboard/static/')[1:]:
            assert (STATIC / part.split('"', 1)[0]).is_file(), part
