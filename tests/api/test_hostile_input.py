"""Hostile and broken input: exact credentials, a client that disconnects mid-upload, and
no 5xx from any value of any header or query parameter the API parses (hypothesis)."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.observability import prometheus as m
from server.security import SESSION_COOKIE, issue_session, session_is_valid
from tests.api.conftest import RunningJob
from tests.support import OPERATOR_KEY, adapter_bytes, bearer, operator

FUZZ = settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)


@pytest.mark.parametrize("spacing", [("  ", ""), (" \t", ""), (" ", " "), (" ", "\t"), (" ", "\n")])
def test_credentials_must_match_exactly(
    api: TestClient, running: RunningJob, spacing: tuple[str, str]
) -> None:
    before, after = spacing
    for token, path in (
        (OPERATOR_KEY, "/api/v1/jobs"),
        (running.clients[0]["credential"], "/api/v1/clients/me/task"),
    ):
        assert api.get(path, headers={"Authorization": f"Bearer {token}"}).status_code == 200
        sent = {"Authorization": f"Bearer{before}{token}{after}".encode()}
        assert api.get(path, headers=sent).status_code == 401, (before, after, path)


def test_a_client_disconnecting_mid_upload_is_one_info_line(
    api: TestClient,
    running: RunningJob,
    caplog,  # type: ignore[no-untyped-def]
) -> None:
    task = api.get("/api/v1/clients/me/task", headers=running.headers(0)).json()
    body = adapter_bytes(task["rank"])
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": body[:100], "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = {
        **running.headers(0),
        "content-length": str(len(body)),
        "flaas-num-samples": "10",
    }
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "PUT",
        "scheme": "http",
        "path": task["upload_url"].split("127.0.0.1:8000", 1)[-1],
        "raw_path": b"",
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    rejected = m.UPLOADS_REJECTED.labels("disconnected")._value.get()
    caplog.set_level(logging.INFO)
    assert api.portal is not None
    api.portal.call(api.app, scope, receive, send)
    assert sent[0]["status"] == 499
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    lines = [r for r in caplog.records if "disconnected" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO
    assert lines[0].client_id == running.clients[0]["client_id"]  # type: ignore[attr-defined]
    assert m.UPLOADS_REJECTED.labels("disconnected")._value.get() == rejected + 1
    # The update still counts when sent again.
    retry = api.put(
        task["upload_url"], content=body, headers={**running.headers(0), "Flaas-Num-Samples": "10"}
    )
    assert retry.status_code == 201


# ------------------------------------------------------------------------- property tests
huge_integers = st.builds(
    lambda sign, digits: sign + digits,
    st.sampled_from(["", "-", "+"]),
    st.text("0123456789", min_size=19, max_size=6000),
)
deep_json = st.integers(1, 3000).map(lambda d: "[" * d + "]" * d) | st.integers(1, 2000).map(
    lambda d: '{"a": ' + "[" * d + "1" + "]" * d + "}"
)
# Inside a JSON object, within the 4 KiB header cap: what Flaas-Metrics parses.
in_json_object = (
    st.text("0123456789", min_size=310, max_size=4000)
    | st.integers(1000, 2000).map(lambda d: "[" * d + "]" * d)
).map(lambda v: '{"a": ' + v + "}")
odd_values = st.one_of(
    st.just(""),
    in_json_object,
    st.just(" "),
    huge_integers,
    deep_json,
    st.text(max_size=200),  # non-ASCII included
    st.sampled_from(["nan", "inf", "-1", "1e400", "0x10", "٣", "１", "null", "{}", "[]"]),
    st.recursive(
        st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=20,
    ).map(lambda v: json.dumps(v, allow_nan=True)),
)


def _header(value: str) -> bytes:
    # Header values travel as bytes; CR, LF and NUL cannot be in one (the client refuses them).
    return value.encode("utf-8", "surrogatepass").translate(None, b"\r\n\x00")[:8000]


@given(value=odd_values, which=st.integers(0, 11))
@FUZZ
def test_no_header_or_query_value_gets_a_5xx(
    api: TestClient, running: RunningJob, value: str, which: int
) -> None:
    job, client = running.id, running.headers(1)
    round_id = api.get("/api/v1/clients/me/task", headers=client).json().get("round_id")
    upload = f"/api/v1/rounds/{round_id}/update"
    raw = _header(value)
    requests: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = [
        ("GET", "/api/v1/clients/me/task", {"wait": value}, client),
        ("GET", "/api/v1/jobs", {"status": value, "limit": value}, operator(api)),
        ("GET", "/api/v1/jobs", {"offset": value}, operator(api)),
        ("GET", f"/api/v1/jobs/{job}/adapter", {"round": value, "format": value}, operator(api)),
        ("GET", f"/api/v1/jobs/{job}/rounds/1/updates", {"status": value}, operator(api)),
        ("GET", f"/api/v1/jobs/{job}/metrics", {"limit": value, "offset": value}, operator(api)),
        ("PUT", upload, {}, {**client, "Flaas-Num-Samples": raw}),
        ("PUT", upload, {}, {**client, "Flaas-Num-Samples": b"3", "Flaas-Metrics": raw}),
        ("PUT", upload, {}, {**client, "Flaas-Num-Samples": b"3", "Flaas-Content-Sha256": raw}),
        ("GET", "/api/v1/jobs", {}, {"Authorization": raw}),
        ("GET", "/api/v1/clients/me/task", {}, {"Authorization": b"Bearer " + raw}),
        ("GET", "/metrics", {}, {"Authorization": b"Bearer " + raw}),
    ]
    method, path, params, headers = requests[which]
    content = b"not an adapter" if method == "PUT" else None
    response = api.request(method, path, params=params, headers=headers, content=content)
    assert response.status_code < 500, (method, path, params, headers, response.text[:300])


cookie_text = st.one_of(
    odd_values,
    st.builds(
        lambda a, b, c: f"{a}.{b}.{c}",
        huge_integers | st.text(max_size=30),
        st.text(max_size=30),
        st.text(max_size=80),
    ),
)


@given(token=cookie_text)
@FUZZ
def test_the_session_cookie_never_fails_and_never_lets_a_forgery_in(
    api: TestClient, token: str
) -> None:
    assert session_is_valid(token, [OPERATOR_KEY]) is False
    cookie = {"Cookie": b"flaas_session=" + _header(token).replace(b";", b"")}
    for path in ("/api/v1/jobs", "/dashboard/"):
        response = api.get(path, headers=cookie, follow_redirects=False)
        assert response.status_code in (302, 303, 307, 401), (path, token, response.text[:200])


def test_an_issued_session_cookie_still_works(api: TestClient) -> None:
    api.cookies.set(SESSION_COOKIE, issue_session(OPERATOR_KEY))
    try:
        assert api.get("/api/v1/jobs").status_code == 200
    finally:
        api.cookies.clear()
    assert bearer("x")  # the helper the other tests use for tokens
