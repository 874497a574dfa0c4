"""The join page in real browsers (Debian's Chromium) against a live coordinator: browser
devices train the digits LoRA adapter in their tabs beside Python SDK clients, a device
reloaded mid-round resumes as itself, and FedSA's private B stays in the browser.

Each browser device is a context of its own (its own localStorage, as on separate phones).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from client_sdk.tasks.job_spec import task_job_spec
from tests.browser.dashboard_support import screenshot
from tests.browser.join_support import (
    COHORT,
    expected_shapes,
    join_with_sample,
    open_join_page,
    python_clients,
    stored_updates,
    wait_done,
)
from tests.live import LiveCoordinator

pytestmark = pytest.mark.slow

ROUNDS = 2
JOB_TIMEOUT_S = 240


@dataclass
class MixedRun:
    """One RBLA digits job: three browser devices (the first reloaded mid-round) and three
    Python clients, run to its end."""

    job: dict[str, Any]
    final: dict[str, Any]
    browser_ids: list[str]
    reloaded_id: str
    delivered: dict[str, Any]  # the coordinator's answer to the upload cut off by the reload
    replays: list[int] = field(default_factory=list)  # statuses of uploads after the reload
    python_results: list[Any] = field(default_factory=list)


def _reload_mid_upload(page: Any) -> dict[str, Any]:
    """Let the device's first upload reach the coordinator, cut its answer off and reload the
    page before any retry gets through: the device has built an update it cannot know was
    delivered. Returns the coordinator's answer and the statuses uploads get after."""
    seen: dict[str, Any] = {"delivered": None, "reloaded": False, "replays": []}

    def on_upload(route: Any) -> None:
        if seen["reloaded"]:
            route.continue_()
        elif seen["delivered"] is None:
            response = route.fetch()  # the coordinator receives the update and answers
            seen["delivered"] = {"status": response.status, **response.json()}
            route.abort("connectionreset")  # ... but the device never hears the answer
        else:
            route.abort("connectionreset")  # a retry before the reload: lost as well

    page.route(re.compile(r".*/api/v1/rounds/[^/]+/update$"), on_upload)
    page.on(
        "response",
        lambda r: seen["replays"].append(r.status) if r.url.endswith("/update") else None,
    )
    while seen["delivered"] is None:
        page.wait_for_timeout(50)
    seen["reloaded"] = True
    page.reload()
    return seen


@pytest.fixture(scope="module")
def mixed(
    browser: Any, live: LiveCoordinator, tmp_path_factory: pytest.TempPathFactory
) -> MixedRun:
    spec = task_job_spec("digits", strategy="rbla", clients=2 * 3, rounds=ROUNDS, r_max=8)
    with live.operator() as http:
        job = http.post("/api/v1/jobs", json={**spec, "name": "digits-browsers"}).json()
    contexts = [browser.new_context() for _ in range(3)]
    try:
        pages = [open_join_page(context, live, job) for context in contexts]
        screenshot(pages[0], "join")
        state_dir = tmp_path_factory.mktemp("python-clients")
        with python_clients(live, job, range(0, 3), state_dir) as results:
            for k, page in enumerate(pages):
                join_with_sample(page, 3 + k)
            seen = _reload_mid_upload(pages[0])
            for page in pages:
                wait_done(page, JOB_TIMEOUT_S)
            screenshot(pages[0], "join-done")
            ids = [p.inner_text("[data-testid=client-id]") for p in pages]
            for page in pages:
                assert page.errors == [], page.errors
        with live.operator() as http:
            final = http.get(f"/api/v1/jobs/{job['id']}").json()
        return MixedRun(
            job=job,
            final=final,
            browser_ids=ids,
            reloaded_id=ids[0],
            delivered=seen["delivered"],
            replays=seen["replays"],
            python_results=results,
        )
    finally:
        for context in contexts:
            context.close()


def test_browser_and_python_clients_finish_one_rbla_job(
    mixed: MixedRun, live: LiveCoordinator
) -> None:
    assert mixed.final["status"] == "finished", mixed.final
    assert sorted(r.status for r in mixed.python_results) == ["finished"] * 3
    with live.operator() as http:
        clients = http.get(f"/api/v1/jobs/{mixed.job['id']}/clients").json()["items"]
    assert len(clients) == COHORT  # the reloaded device did not enrol twice
    ranks = {c["id"]: c["rank"] for c in clients}
    assert set(mixed.browser_ids) <= set(ranks)
    assert len(set(ranks.values())) > 1, ranks  # heterogeneous ranks, browsers among them
    for client in clients:
        assert client["rounds_contributed"] == ROUNDS, client


def test_every_browser_update_passed_the_python_clients_validation(
    mixed: MixedRun, live: LiveCoordinator
) -> None:
    """Accepted, aggregated, and stored with exactly the keys and shapes of its rank (RBLA:
    A, B and the shared head), like the Python clients' updates of the same rank."""
    spec = mixed.final["spec"]
    updates = stored_updates(live, mixed.job["id"])
    assert len(updates) == COHORT * ROUNDS
    for update in updates:
        wanted = expected_shapes(spec, update["rank"], ("lora_A", "lora_B", "extra"))
        assert update["shapes"] == wanted, update
        assert {"train_loss", "val_accuracy"} <= set(update["metrics"]), update
    from_browsers = [u for u in updates if u["client_id"] in mixed.browser_ids]
    assert len(from_browsers) == 3 * ROUNDS
    with live.operator() as http:
        for number in range(1, ROUNDS + 1):
            rnd = http.get(f"/api/v1/jobs/{mixed.job['id']}/rounds/{number}").json()
            assert rnd["status"] == "closed" and rnd["global_adapter"]["n_updates"] == COHORT


def test_a_device_reloaded_mid_round_resumes_and_is_counted_once(
    mixed: MixedRun, live: LiveCoordinator
) -> None:
    assert mixed.delivered["status"] == 201, mixed.delivered
    assert mixed.delivered["client_id"] == mixed.reloaded_id  # the same client after reload
    # After the reload it sent the same update again, and heard it was already accepted.
    assert 200 in mixed.replays, mixed.replays
    stored = stored_updates(live, mixed.job["id"])
    updates = [u for u in stored if u["client_id"] == mixed.reloaded_id]
    assert sorted(u["round"] for u in updates) == list(range(1, ROUNDS + 1))
    first = next(u for u in updates if u["round_id"] == mixed.delivered["round_id"])
    assert first["sha256"] == mixed.delivered["sha256"]


def test_a_fedsa_browser_device_keeps_b_to_itself(browser: Any, live: LiveCoordinator) -> None:
    spec = task_job_spec("digits", strategy="fedsa", clients=2, rounds=ROUNDS, r_max=8)
    with live.operator() as http:
        job = http.post("/api/v1/jobs", json={**spec, "name": "digits-fedsa"}).json()
    contexts = [browser.new_context() for _ in range(2)]
    try:
        pages = [open_join_page(context, live, job) for context in contexts]
        expect(pages[0].locator("[data-testid=shared]")).to_contain_text("LoRA A")
        expect(pages[0].locator("[data-testid=shared]")).not_to_contain_text("LoRA B")
        expect(pages[0].locator("[data-testid=private]")).to_contain_text("LoRA B")
        for k, page in enumerate(pages):
            join_with_sample(page, k, of=2)
        for page in pages:
            wait_done(page, JOB_TIMEOUT_S)
            assert page.errors == [], page.errors
        kept = [_stored_in_browser(page) for page in pages]
    finally:
        for context in contexts:
            context.close()
    for storage in kept:  # each device holds a B of its own...
        assert any("lora_B" in value for value in storage.values()), list(storage)
    updates = stored_updates(live, job["id"])
    assert len(updates) == 2 * ROUNDS
    for update in updates:  # ... and none of it ever reached the coordinator
        assert update["shapes"] == expected_shapes(job["spec"], update["rank"], ("lora_A",))
    blobs = list((live.workdir / "adapters" / "jobs" / job["id"]).rglob("*.safetensors"))
    assert blobs and not [b for b in blobs if b"lora_B" in _header(b)]


def _stored_in_browser(page: Any) -> dict[str, str]:
    return dict(json.loads(page.evaluate("() => JSON.stringify({ ...localStorage })")))


def _header(path: Path) -> bytes:
    data = path.read_bytes()
    return data[8 : 8 + int.from_bytes(data[:8], "little")]


def test_the_dashboard_shows_the_join_link_and_its_qr_code(
    dashboard: Any, live: LiveCoordinator
) -> None:
    spec = task_job_spec("digits", strategy="rbla", clients=4, rounds=1)
    with live.operator() as http:
        job = http.post("/api/v1/jobs", json=spec).json()
    dashboard.goto(f"{live.url}/dashboard/jobs/{job['id']}")
    dashboard.click("[data-testid=invite-details] summary")
    dashboard.fill("#invite-token", "flj_not-this-jobs-token")
    dashboard.click("[data-testid=invite] button")
    expect(dashboard.locator("[data-testid=invite-message]")).to_contain_text("does not open")
    dashboard.fill("#invite-token", job["join_token"])
    dashboard.click("[data-testid=invite] button")
    link = f"{live.url}/join/{job['id']}#t={job['join_token']}"
    expect(dashboard.locator("[data-testid=join-link]")).to_have_attribute("href", link)
    qr = dashboard.locator("[data-testid=join-qr]")
    expect(qr).to_be_visible()
    assert int(qr.get_attribute("data-version")) >= 4  # room for a link of this length
    screenshot(dashboard, "job-invite")
    # The link opens the job's join page, which the token lets describe the job.
    page = dashboard.context.new_page()
    page.goto(link)
    expect(page.locator("[data-testid=fact-strategy]")).to_have_text("rbla")
    page.close()
    # The refused token's 401 is a console error of its own; nothing else may be.
    assert [e for e in dashboard.errors if "401" not in e] == [], dashboard.errors
