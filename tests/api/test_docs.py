"""``/docs`` works without internet: its page loads only files the coordinator serves."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

CONTENT_TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".png": "image/png",
}


def test_docs_reference_only_local_assets_that_answer(api: TestClient) -> None:
    page = api.get("/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    refs = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", page.text)
    assert "/openapi.json" in refs
    assert not [ref for ref in refs if "//" in ref], "a URL outside the coordinator"
    assets = [ref for ref in refs if ref.startswith("/docs/static/")]
    assert {ref.rsplit(".", 1)[1] for ref in assets} == {"js", "css", "png"}
    for ref in assets:
        answer = api.get(ref)
        assert answer.status_code == 200, ref
        expected = CONTENT_TYPES[ref[ref.rindex(".") :]]
        assert answer.headers["content-type"].startswith(expected), (ref, answer.headers)
        assert len(answer.content) > 100, ref
    assert "validatorUrl" in page.text  # no call to the online validator either
    assert api.get("/openapi.json").json()["openapi"].startswith("3.")


def test_redoc_is_not_offered(api: TestClient) -> None:
    assert api.get("/redoc").status_code == 404


def test_swagger_ui_ships_with_its_licence() -> None:
    from server.api.docs import SWAGGER_UI_DIR

    assert "Apache License" in (SWAGGER_UI_DIR / "LICENSE-swagger-ui.txt").read_text()
