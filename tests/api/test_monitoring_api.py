"""Monitoring endpoints (metrics, summary, client activity, updates, events) and the
dashboard's session cookie as operator authentication."""

from __future__ import annotations

import json
import time

from fastapi.testclient import TestClient

from server.security import SESSION_COOKIE, issue_session
from tests.api.conftest import RunningJob
from tests.live import wait_until
from tests.support import OPERATOR_KEY, adapter_bytes, operator


def _upload_round(api: TestClient, running: RunningJob) -> list[int]:
    sizes = []
    for i in range(len(running.clients)):
        task = api.get("/api/v1/clients/me/task", headers=running.headers(i)).json()
        body = adapter_bytes(task["rank"], seed=i)
        response = api.put(
            task["upload_url"],
            content=body,
            headers={
                **running.headers(i),
                "Flaas-Num-Samples": "10",
                "Flaas-Metrics": json.dumps({"val_loss": float(i), "train_loss": 1.0}),
            },
        )
        assert response.status_code == 201, response.text
        sizes.append(len(body))
    return sizes


def test_round_metrics_summary_and_activity(api: TestClient, running: RunningJob) -> None:
    sizes = _upload_round(api, running)
    base = f"/api/v1/jobs/{running.id}"
    wait_until(
        lambda: api.get(f"{base}/rounds/1", headers=operator(api)).json(),
        lambda r: r["status"] == "closed",
    )
    page = api.get(f"{base}/metrics", headers=operator(api)).json()
    assert [r["number"] for r in page["items"]] == [0, 1, 2] and page["total"] == 3
    first = page["items"][1]
    assert (first["participants"], first["accepted"], first["stragglers"]) == (3, 3, 0)
    val_loss = first["metrics"]["val_loss"]
    assert (val_loss["n"], val_loss["mean"], val_loss["min"], val_loss["max"]) == (3, 1.0, 0.0, 2.0)
    assert first["bytes_up"] == sum(sizes) and first["bytes_down_estimate"] > 0
    assert len(first["coverage"]) == running.job["r_max"] and first["aggregating_seconds"] >= 0
    summary = api.get(f"{base}/summary", headers=operator(api)).json()
    assert summary["clients"] == 3 and sum(b["clients"] for b in summary["rank_histogram"]) == 3
    assert summary["client_states"]["training"] == 3  # sampled into the open round 2
    assert len(summary["critic_weights"]) == len(summary["criteria"])
    assert summary["autorank_reference"] == "bounds" and summary["rank_budget"] is None
    activity = api.get(f"{base}/clients/activity?limit=2", headers=operator(api)).json()
    assert activity["total"] == 3 and len(activity["items"]) == 2
    assert {c["state"] for c in activity["items"]} == {"training"}
    assert all(c["rounds_contributed"] == 1 and c["last_round"] == 2 for c in activity["items"])
    updates = api.get(
        f"{base}/rounds/1/updates?status=accepted&limit=2", headers=operator(api)
    ).json()
    assert updates["total"] == 3 and len(updates["items"]) == 2
    assert api.get(f"{base}/rounds/9/updates", headers=operator(api)).status_code == 404


def test_events_stream_reports_progress_and_ends_with_the_job(
    api: TestClient, running: RunningJob
) -> None:
    api.post(f"/api/v1/jobs/{running.id}/cancel", headers=operator(api))
    response = api.get(f"/api/v1/jobs/{running.id}/events", headers=operator(api))
    assert response.headers["content-type"].startswith("text/event-stream")
    data = [line for line in response.text.splitlines() if line.startswith("data: ")]
    assert json.loads(data[0][6:])["status"] == "cancelled"
    assert json.loads(data[0][6:])["ended"] is True


def test_dashboard_login_sets_a_cookie_the_api_accepts(
    api: TestClient, running: RunningJob
) -> None:
    assert (
        api.get("/dashboard/jobs", follow_redirects=False)
        .headers["location"]
        .startswith("/dashboard/login?next=")
    )
    wrong = api.post("/dashboard/login", data={"operator_key": "nope"}, follow_redirects=False)
    assert wrong.status_code == 401 and "not valid" in wrong.text
    ok = api.post(
        "/dashboard/login",
        data={"operator_key": OPERATOR_KEY, "next": "https://evil.example/"},
        follow_redirects=False,
    )
    assert ok.status_code == 303 and ok.headers["location"] == "/dashboard/jobs"
    cookie = ok.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    token = ok.cookies[SESSION_COOKIE]

    def status_with(cookie: str, path: str = "/api/v1/jobs", **kwargs: object) -> int:
        api.cookies.clear()
        api.cookies.set(SESSION_COOKIE, cookie)
        return api.get(path, **kwargs).status_code  # type: ignore[arg-type]

    assert status_with(token) == 200
    assert status_with(token, "/dashboard/jobs") == 200
    assert status_with(token[:-1] + ("0" if token[-1] != "0" else "1")) == 401
    assert status_with(issue_session(OPERATOR_KEY, now=time.time() - 13 * 3600)) == 401
    # Malformed tokens are refused with a 401 from every route, never a 500: an expiry too
    # long for int(), Unicode digits, a non-ASCII MAC, an oversized token.
    payload, mac = token.rsplit(".", 1)
    for bad in (
        "9" * 5000 + ".n.x",
        "\u00b2\u00b3.n." + mac,
        f"{payload}.\u00e9{mac[1:]}",
        token + "0" * 300,
        "..",
    ):
        api.cookies.clear()
        raw = {"Cookie": f"{SESSION_COOKIE}={bad}".encode()}  # bytes: httpx sends them as they are
        assert api.get("/api/v1/jobs", headers=raw).status_code == 401, bad[:40]
        page = api.get("/dashboard/jobs", headers=raw, follow_redirects=False)
        assert page.status_code == 303, bad[:40]
    # A wrong Bearer key is refused even next to a valid cookie.
    assert status_with(token, headers={"Authorization": "Bearer wrong"}) == 401
    api.cookies.clear()
