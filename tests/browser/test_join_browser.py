"""The join page in real browsers (Debian's Chromium) against a live coordinator: browser
devices train the digits LoRA adapter in their tabs beside Python SDK clients, a device
reloaded mid-round resumes as itself, one without SubtleCrypto hashes its updates in
TypeScript, and FedSA's private B stays in the browser.

Each browser device is a context of its own (its own localStorage, as on separate phones).
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from playwright.sync_api import expect
from safetensors.numpy import load

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
#: The browser device that has no SubtleCrypto, as a phone on a coordinator's plain-http LAN
#: address (browsers keep Web Crypto to secure contexts, and 127.0.0.1 is one): its client
#: falls back to its own SHA-256 for the digits assets, its state and its uploads.
NO_SUBTLE = 1
WITHOUT_SUBTLE_CRYPTO = "delete Crypto.prototype.subtle;"


@dataclass
class MixedRun:
    """One RBLA digits job: three browser devices (the first reloaded mid-round, the second
    without SubtleCrypto) and three Python clients, run to its end."""

    job: dict[str, Any]
    final: dict[str, Any]
    browser_ids: list[str]
    shown: list[tuple[str, int]]  # (rank, rows of the rounds table) each page shows at the end
    reloaded_id: str
    delivered: dict[str, Any]  # the coordinator's answer to the upload cut off by the reload
    subtle_in_page: str  # typeof crypto.subtle on the NO_SUBTLE device's page, at the end
    sent_sha256: list[str]  # the Flaas-Content-Sha256 of every upload that device sent
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
            seen["delivered"] = {"http_status": response.status, **response.json()}
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
    contexts[NO_SUBTLE].add_init_script(WITHOUT_SUBTLE_CRYPTO)
    try:
        pages = [open_join_page(context, live, job) for context in contexts]
        screenshot(pages[0], "join")
        sent_sha256: list[str] = []
        pages[NO_SUBTLE].on(
            "request",
            lambda r: (
                sent_sha256.append(r.headers.get("flaas-content-sha256", ""))
                if r.url.endswith("/update")
                else None
            ),
        )
        state_dir = tmp_path_factory.mktemp("python-clients")
        with python_clients(live, job, range(0, 3), state_dir) as results:
            for k, page in enumerate(pages):
                join_with_sample(page, 3 + k)
            seen = _reload_mid_upload(pages[0])
            for page in pages:
                wait_done(page, JOB_TIMEOUT_S)
            screenshot(pages[0], "join-done")
            ids = [p.inner_text("[data-testid=client-id]") for p in pages]
            rows = "[data-testid=rounds-table] tbody tr"
            shown = [(p.inner_text("[data-testid=rank]"), p.locator(rows).count()) for p in pages]
            subtle_in_page = pages[NO_SUBTLE].evaluate("() => typeof crypto.subtle")
            for page in pages:
                assert page.errors == [], page.errors
        with live.operator() as http:
            final = http.get(f"/api/v1/jobs/{job['id']}").json()
        return MixedRun(
            job=job,
            final=final,
            browser_ids=ids,
            shown=shown,
            reloaded_id=ids[0],
            delivered=seen["delivered"],
            subtle_in_page=subtle_in_page,
            sent_sha256=sent_sha256,
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
    # Each page showed its device's rank and one row per round it trained.
    assert mixed.shown == [(str(ranks[i]), ROUNDS) for i in mixed.browser_ids]


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
    assert mixed.delivered["http_status"] == 201, mixed.delivered
    assert mixed.delivered["client_id"] == mixed.reloaded_id  # the same client after reload
    # After the reload it sent the same update again, and heard it was already accepted.
    assert 200 in mixed.replays, mixed.replays
    stored = stored_updates(live, mixed.job["id"])
    updates = [u for u in stored if u["client_id"] == mixed.reloaded_id]
    assert sorted(u["round"] for u in updates) == list(range(1, ROUNDS + 1))
    first = next(u for u in updates if u["round_id"] == mixed.delivered["round_id"])
    assert first["sha256"] == mixed.delivered["sha256"]


def test_a_device_without_subtle_crypto_sends_its_updates_true_sha256(
    mixed: MixedRun, live: LiveCoordinator
) -> None:
    """The client's own SHA-256 stands in for SubtleCrypto: every upload's
    Flaas-Content-Sha256 is the hash the coordinator computed of the bytes it accepted (the
    hash a resend after a reload is answered by), one update per round."""
    assert mixed.subtle_in_page == "undefined"
    device = mixed.browser_ids[NO_SUBTLE]
    updates = [u for u in stored_updates(live, mixed.job["id"]) if u["client_id"] == device]
    assert sorted(u["round"] for u in updates) == list(range(1, ROUNDS + 1))
    assert mixed.sent_sha256, "the device sent no upload"
    assert set(mixed.sent_sha256) == {u["sha256"] for u in updates}, mixed.sent_sha256


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
        kept = [_private_b(page) for page in pages]
    finally:
        for context in contexts:
            context.close()
    updates = stored_updates(live, job["id"])
    assert len(updates) == 2 * ROUNDS
    for update in updates:  # A only: B and the head are FedSA's private parts
        assert update["shapes"] == expected_shapes(job["spec"], update["rank"], ("lora_A",))
    stored = (live.workdir / "adapters" / "jobs" / job["id"]).rglob("*")
    blobs = [path.read_bytes() for path in stored if path.is_file()]
    assert len(blobs) > len(updates)  # the updates and the global adapters
    for private in kept:  # each device trained a B of its own, which no stored blob holds
        assert set(private) == {f"{m}.lora_B.weight" for m in job["spec"]["modules"]}
        for name, b in private.items():
            assert np.any(b != 0), name
            assert not [blob for blob in blobs if b.tobytes() in blob], name


def _private_b(page: Any) -> dict[str, np.ndarray]:
    """The B factors in the device's storage (the client's state entry keeps its private
    tensors as base64 safetensors)."""
    entries = page.evaluate(
        "() => Object.entries(localStorage).filter(([k]) => k.startsWith('flaas-client:'))"
        ".map(([, v]) => v)"
    )
    assert len(entries) == 1, entries
    private = load(base64.b64decode(json.loads(entries[0])["private"]))
    return {k: v for k, v in private.items() if k.endswith(".lora_B.weight")}


def test_the_dashboard_shows_the_join_link_and_its_qr_code(
    dashboard: Any, live: LiveCoordinator
) -> None:
    spec = task_job_spec("digits", strategy="rbla", clients=4, rounds=1)
    with live.operator() as http:
        job = http.post("/api/v1/jobs", json=spec).json()
    failed: list[tuple[int, str]] = []
    dashboard.on(
        "response", lambda r: failed.append((r.status, r.url)) if r.status >= 400 else None
    )
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
    # Only the refused token failed (its 401), and no script broke.
    assert failed == [(401, f"{live.url}/api/v1/jobs/{job['id']}/join")]
    assert [e for e in dashboard.errors if "Failed to load resource" not in e] == []
