"""The join page's routes: one shell for every job, its static files, and nothing in a URL
that a server log could keep of the token."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urljoin

from server.join import join_link
from server.join.routes import STATIC_DIR
from tests.support import coordinator, settings_for

JOB = "0b5f0d8e-2a5a-4c51-9a3e-6a0d8a9f0c11"


def test_the_page_is_the_same_shell_for_every_job_and_sends_no_referrer(tmp_path: Path) -> None:
    settings = settings_for(f"sqlite:///{tmp_path / 'flaas.db'}", tmp_path / "adapters")
    with coordinator(settings) as api:
        page = api.get(f"/join/{JOB}")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert page.headers["cache-control"] == "no-store"
        assert page.headers["referrer-policy"] == "no-referrer"
        assert JOB not in page.text  # the script reads the job from the path
        assert page.text == api.get("/join/00000000-0000-4000-8000-000000000000").text
        assert api.get("/join/not-a-job").status_code == 422
        assembled = re.findall(r'(?:src|href)="(/[^"]+)"', page.text)
        # ... and every module the page's script imports (the bundle, the dashboard's helpers)
        imports = re.findall(r'from "([^"]+)"', (STATIC_DIR / "join.js").read_text())
        assert "./flaas-client.js" in imports
        assembled += [urljoin("/join/static/join.js", module) for module in imports]
        for path in assembled:
            answer = api.get(path)
            assert answer.status_code == 200, path
            if path.endswith(".js"):
                assert "javascript" in answer.headers["content-type"], path


def test_the_join_link_carries_the_token_in_its_fragment() -> None:
    link = join_link("https://flaas.example/", JOB, "flj_a-b_c")
    assert link == f"https://flaas.example/join/{JOB}#t=flj_a-b_c"
    assert "flj_" not in link.split("#", 1)[0]  # what a request (and its log line) carries
