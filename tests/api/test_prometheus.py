"""``GET /metrics``: a job driven through the API moves each counter by what happened."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from server.observability.collectors import BrokerLevels
from tests.api.conftest import start_job
from tests.api.test_round_flow import train_round, wait_for
from tests.support import adapter_bytes, bearer, coordinator, operator, settings_for

ROOT = Path(__file__).resolve().parents[2]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape(api: TestClient) -> Samples:
    response = api.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return parse(response.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_a_job_moves_the_counters_by_what_happened(api: TestClient) -> None:
    before = scrape(api)
    running = start_job(api, rounds=2)
    train_round(api, running, seed=1)
    wait_for(
        lambda: (
            api.get(f"/api/v1/jobs/{running.id}", headers=operator(api)).json()["current_round"]
            == 2
        )
    )
    task = api.get("/api/v1/clients/me/task", headers=running.headers(0)).json()
    refused = api.put(
        task["upload_url"],
        content=b"not safetensors",
        headers={**running.headers(0), "Flaas-Num-Samples": "5"},
    )
    assert refused.status_code == 422
    train_round(api, running, seed=2)
    wait_for(
        lambda: (
            api.get(f"/api/v1/jobs/{running.id}", headers=operator(api)).json()["status"]
            == "finished"
        )
    )
    after = scrape(api)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("flaas_jobs_started_total") == 1
    assert delta("flaas_jobs_ended_total", status="finished") == 1
    assert delta("flaas_rounds_opened_total") == 2
    assert delta("flaas_rounds_closed_total") == 2
    assert delta("flaas_rounds_failed_total") == 0
    assert delta("flaas_uploads_accepted_total") == 6
    assert delta("flaas_uploads_rejected_total", reason="invalid_adapter") == 1
    assert delta("flaas_stragglers_total") == 0
    assert delta("flaas_aggregation_duration_seconds_count", strategy="rbla") == 2
    update = "/api/v1/rounds/{round_id}/update"
    assert delta("flaas_http_requests_total", method="PUT", route=update, status="201") == 6
    assert delta("flaas_http_requests_total", method="PUT", route=update, status="422") == 1
    assert delta("flaas_http_request_duration_seconds_count", method="PUT", route=update) == 7
    assert delta("flaas_http_received_bytes_total", route=update) >= 6 * len(adapter_bytes(2))
    assert delta("flaas_http_sent_bytes_total", route="/api/v1/rounds/{round_id}/adapter") > 0
    # Route templates, never raw paths: no series names a round's or a job's id in its route.
    assert not [k for k in after if running.id in dict(k[1]).get("route", "")]
    assert value(after, "flaas_jobs", status="finished") >= 1
    # Clients by state are reported for live jobs only: this one has finished.
    assert not [k for k in after if dict(k[1]).get("job_id") == running.id]


def test_clients_by_state_of_a_running_job(api: TestClient) -> None:
    running = start_job(api)
    samples = scrape(api)
    states = {
        dict(labels)["state"]: v
        for (name, labels), v in samples.items()
        if name == "flaas_clients" and dict(labels)["job_id"] == running.id
    }
    assert states == {"enrolled": 0, "training": 3, "active": 0, "straggling": 0}
    api.get("/nowhere")
    after = scrape(api)
    assert (
        value(after, "flaas_http_requests_total", method="GET", route="unmatched", status="404")
        >= 1
    )


def test_the_metrics_token_when_set(database_url: str, tmp_path: Path) -> None:
    settings = settings_for(database_url, tmp_path / "adapters", metrics_token="scrape-secret")
    with coordinator(settings) as api:
        assert api.get("/metrics").status_code == 401
        assert api.get("/metrics", headers=operator(api)).status_code == 401
        assert api.get("/metrics", headers=bearer("scrape-secret ")).status_code == 401
        assert api.get("/metrics", headers=bearer("scrape-secret")).status_code == 200


def test_an_unreachable_broker_is_reported_not_raised() -> None:
    from celery import Celery

    celery = Celery(broker="redis://127.0.0.1:9/0")
    families = {f.name: f for f in BrokerLevels(celery, "flaas", 0.5).collect()}
    assert [s.value for s in families["flaas_broker_up"].samples] == [0]


def test_the_broker_levels_of_a_live_redis() -> None:
    from celery import Celery

    celery = Celery(broker="redis://127.0.0.1:6379/15")
    try:
        families = {f.name: f for f in BrokerLevels(celery, "flaas-test-empty", 0.5).collect()}
    finally:
        celery.close()
    if families["flaas_broker_up"].samples[0].value == 0:
        pytest.skip("Redis is not reachable on 127.0.0.1:6379")
    assert families["flaas_queue_depth"].samples[0].value == 0
    assert families["flaas_workers_up"].samples[0].value == 0


def test_processes_share_counters_through_the_multiprocess_directory(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    count = "from server.observability import prometheus as m; m.ROUNDS_OPENED.inc(); "
    for _ in range(2):
        subprocess.run([sys.executable, "-c", count], env=env, check=True)
    scraped = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from server.observability.prometheus import exposition; "
            "sys.stdout.write(exposition([]).decode())",
        ],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert value(parse(scraped), "flaas_rounds_opened_total") == 2
