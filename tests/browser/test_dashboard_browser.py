"""The dashboard in a real browser (Debian's Chromium under Playwright) against a live
coordinator: login gate, every page on a real running job, live updates, and scale."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect
from safetensors.torch import load, save

from tests.browser.dashboard_support import Traffic, screenshot, seed_scale_job
from tests.live import LiveCoordinator, enrol_clients, wait_until
from tests.support import OPERATOR_KEY, adapter_tensors, job_spec

pytestmark = pytest.mark.slow

MAX_PAGE_BYTES = 1_000_000


def train_round(live: LiveCoordinator, credentials: list[str], number: int) -> None:
    """Every client downloads its adapter and uploads an update with metrics."""
    for i, credential in enumerate(credentials):
        with live.client(credential) as http:
            task = http.get("/api/v1/clients/me/task").json()
            assert task["action"] == "train" and task["round_number"] == number, task
            load(http.get(task["adapter_url"]).content)
            if number == 1 and i == 0:  # one refused upload, shown with its reason
                bad = save(adapter_tensors(task["rank"] + 1))
                wrong = http.put(
                    task["upload_url"], content=bad, headers={"Flaas-Num-Samples": "25"}
                )
                assert wrong.status_code == 422
            metrics = {
                "train_loss": 1.5 / number + 0.1 * i,
                "val_loss": 1.7 / number + 0.1 * i,
                "val_accuracy": 0.4 + 0.1 * number - 0.02 * i,
            }
            response = http.put(
                task["upload_url"],
                content=save(adapter_tensors(task["rank"], seed=10 * number + i)),
                headers={"Flaas-Num-Samples": str(25 + i), "Flaas-Metrics": json.dumps(metrics)},
            )
            assert response.status_code == 201, response.text


def wait_round_closed(live: LiveCoordinator, job_id: str, number: int) -> None:
    with live.operator() as http:
        wait_until(
            lambda: http.get(f"/api/v1/jobs/{job_id}/rounds/{number}").json(),
            lambda r: r["status"] == "closed",
        )


def chart_points(page: Any, name: str) -> int:
    return int(
        page.evaluate(
            "(name) => { const u = window.__charts[name];"
            " return u ? u.data[1].filter((v) => v !== null).length : 0; }",
            name,
        )
    )


def test_login_gate(browser_context: Any, live: LiveCoordinator) -> None:
    page = browser_context.new_page()
    page.context.clear_cookies()
    page.goto(f"{live.url}/dashboard/jobs?status=running")
    assert "/dashboard/login" in page.url
    assert page.locator("#login-error").is_hidden()
    with httpx.Client(base_url=live.url) as http:  # the API refuses anonymous calls too
        assert http.get("/api/v1/jobs").status_code == 401
    page.fill("#operator_key", "not-the-key")
    page.click("button[type=submit]")
    page.wait_for_selector("#login-error:not([hidden])")
    assert "not valid" in page.inner_text("#login-error")
    screenshot(page, "login-error")
    page.fill("#operator_key", OPERATOR_KEY)
    page.click("button[type=submit]")
    page.wait_for_url(f"{live.url}/dashboard/jobs?status=running")
    page.wait_for_selector("[data-testid=jobs] .state, [data-testid=jobs-table]")
    cookie = next(c for c in page.context.cookies() if c["name"] == "flaas_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    page.click("text=Log out")
    page.wait_for_url(f"{live.url}/dashboard/login")
    page.goto(f"{live.url}/dashboard/jobs")
    assert "/dashboard/login" in page.url
    page.close()


def test_pages_of_a_running_job_render_and_update_live(
    dashboard: Any, live: LiveCoordinator
) -> None:
    with live.operator() as http:
        job = http.post("/api/v1/jobs", json=job_spec(name="digits-demo", rounds=4)).json()
        credentials = enrol_clients(http, job, 3, name="phone")
    for number in (1, 2):
        train_round(live, credentials, number)
        wait_round_closed(live, job["id"], number)
    base = f"{live.url}/dashboard/jobs/{job['id']}"

    dashboard.goto(f"{live.url}/dashboard/jobs")
    dashboard.wait_for_selector("[data-testid=jobs-table] >> text=digits-demo")
    screenshot(dashboard, "jobs")

    dashboard.goto(base)
    counter = dashboard.locator("[data-testid=round-counter]")
    assert counter.inner_text() == "3 / 4"
    dashboard.wait_for_function("() => window.__charts && window.__charts.eval")
    assert chart_points(dashboard, "eval") == 2  # rounds 1 and 2, mean val_accuracy
    assert chart_points(dashboard, "loss") == 2
    assert dashboard.locator("[data-testid=eval-chart] canvas").count() >= 1
    expect(dashboard.locator("[data-testid=coverage-canvas]")).to_have_count(1)
    expect(dashboard.locator("[data-testid=autorank-table] tbody tr")).to_have_count(3)
    expect(dashboard.locator("[data-testid=rank-histogram] .hbar")).not_to_have_count(0)
    expect(
        dashboard.locator("[data-testid=rounds-table] a[href*='adapter?round=2']")
    ).to_have_count(1)
    screenshot(dashboard, "job")

    # The next round trains while the page stays open: the counter moves without a reload.
    dashboard.evaluate("() => { window.__notReloaded = true; }")
    train_round(live, credentials, 3)
    dashboard.wait_for_function(
        "() => document.querySelector('[data-testid=round-counter]').textContent === '4 / 4'",
        timeout=20_000,
    )
    dashboard.wait_for_function(
        "() => window.__charts.eval.data[1].filter((v) => v !== null).length === 3"
    )
    assert dashboard.evaluate("() => window.__notReloaded") is True
    screenshot(dashboard, "job-live")

    dashboard.goto(f"{base}/rounds/1")
    dashboard.wait_for_selector("[data-testid=updates-table]")
    expect(dashboard.locator("[data-testid=updates-table] tbody tr")).to_have_count(3)
    rejected = dashboard.locator("[data-testid=updates-table] .reject")
    # Client 0 sent rank + 1 rows of A (its rank depends on AutoRank's reference, not pinned).
    expect(rejected).to_contain_text(re.compile(r"has shape \((\d+), 8\) but .* needs \(\d+, 8\)"))
    expect(dashboard.locator("[data-testid=round-rejected-uploads]")).to_have_text("1")
    screenshot(dashboard, "round")

    dashboard.goto(f"{base}/clients")
    dashboard.wait_for_selector("[data-testid=clients-table]")
    expect(dashboard.locator("[data-testid=clients-table] tbody tr")).to_have_count(3)
    expect(dashboard.locator("[data-testid=clients-table] >> text=training")).to_have_count(3)
    screenshot(dashboard, "clients")


def test_a_job_with_1000_clients_and_200_rounds_stays_light(
    dashboard: Any, live: LiveCoordinator, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = job_spec(
        name="scale-1000x200",
        rounds=200,
        enrolment={"min_clients": 1000, "target_clients": 1000, "timeout_s": 3600},
    )
    with live.operator() as http:
        job = http.post("/api/v1/jobs", json=spec).json()
    seed_scale_job(
        live.env["FLAAS_DATABASE_URL"], job["id"], clients=1000, rounds=200, sampled=100, r_max=8
    )
    base = f"{live.url}/dashboard/jobs/{job['id']}"
    pages = {
        "jobs": (f"{live.url}/dashboard/jobs", "[data-testid=jobs-table]"),
        "job": (base, "[data-testid=autorank-table]"),
        "round": (f"{base}/rounds/200", "[data-testid=updates-table]"),
        "clients": (f"{base}/clients", "[data-testid=clients-table]"),
    }
    # Cold cache: every page load pays for its scripts, styles and uPlot again.
    cdp = dashboard.context.new_cdp_session(dashboard)
    cdp.send("Network.enable")
    cdp.send("Network.setCacheDisabled", {"cacheDisabled": True})
    traffic = Traffic(dashboard)
    report = {}
    try:
        for name, (url, ready) in pages.items():
            traffic.reset()
            started = time.perf_counter()
            dashboard.goto(url)
            dashboard.wait_for_selector(ready)
            if name == "job":
                dashboard.wait_for_function("() => window.__charts.eval.data[1].length === 200")
            seconds = time.perf_counter() - started
            dashboard.wait_for_timeout(300)  # late responses (live refresh) count too
            report[name] = (traffic.bytes, traffic.requests, seconds)
            screenshot(dashboard, f"scale-{name}")
            if name in {"round", "clients"}:  # 1,000 rows, served 50 at a time
                expect(dashboard.locator(f"{ready} tbody tr")).to_have_count(50)
                expect(dashboard.locator(".pager")).to_contain_text("1–50 of 1,000")
    finally:
        traffic.close()
        cdp.detach()
    with capsys.disabled():
        print("\ndashboard page weights, cold cache (1,000 clients, 200 rounds):")
        for name, (size, requests, seconds) in report.items():
            print(f"  {name:8s} {size / 1024:8.1f} KiB in {requests:2d} requests, {seconds:.2f} s")
    for name, (size, _, seconds) in report.items():
        assert size < MAX_PAGE_BYTES, f"{name} page transferred {size} bytes"
        assert seconds < 10, f"{name} page took {seconds:.1f} s"
