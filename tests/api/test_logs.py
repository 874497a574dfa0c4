"""Log lines: the lifecycle of a job with its ids, JSON or text, and polls at DEBUG."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from server.observability.logs import configure_logging
from tests.api.conftest import start_job
from tests.api.test_round_flow import train_round, wait_for
from tests.support import operator


@pytest.fixture
def restored_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_a_job_logs_its_lifecycle_with_ids(api: TestClient, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.INFO, logger="server.lifecycle")
    running = start_job(api, rounds=1)
    train_round(api, running, seed=3)
    wait_for(
        lambda: (
            api.get(f"/api/v1/jobs/{running.id}", headers=operator(api)).json()["status"]
            == "finished"
        )
    )
    records = [r for r in caplog.records if r.name == "server.lifecycle"]
    messages = [r.getMessage() for r in records]
    assert all(getattr(r, "job_id", None) == running.id for r in records)
    assert all(r.levelno == logging.INFO for r in records)
    expected = ("started with 3 clients", "opened", "is aggregating", "closed in", "finished")
    for piece in expected:
        assert any(piece in m for m in messages), (piece, messages)
    closed = next(r for r in records if "closed in" in r.getMessage())
    assert closed.round == 1 and closed.round_id and closed.stragglers == 0  # type: ignore[attr-defined]
    assert closed.seconds >= closed.aggregation_seconds >= 0  # type: ignore[attr-defined]


def test_a_failed_job_logs_its_reason(api: TestClient, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.INFO, logger="server.lifecycle")
    running = start_job(api)
    assert api.post(f"/api/v1/jobs/{running.id}/cancel", headers=operator(api)).status_code == 200
    ended = [r for r in caplog.records if getattr(r, "status", None) == "cancelled"]
    assert len(ended) == 1 and ended[0].reason == "cancelled by an operator"  # type: ignore[attr-defined]


def test_task_polls_are_debug_and_other_requests_info(
    api: TestClient,
    caplog,  # type: ignore[no-untyped-def]
) -> None:
    caplog.set_level(logging.DEBUG, logger="server.access")
    running = start_job(api)
    api.get("/api/v1/clients/me/task", headers=running.headers(0))
    api.get("/healthz")
    api.get(f"/api/v1/jobs/{running.id}", headers=operator(api))
    level = {r.route: r.levelno for r in caplog.records if r.name == "server.access"}  # type: ignore[attr-defined]
    assert level["/api/v1/clients/me/task"] == logging.DEBUG
    assert level["/healthz"] == logging.DEBUG
    assert level["/api/v1/jobs/{job_id}"] == logging.INFO
    assert level["/api/v1/jobs/{job_id}/clients"] == logging.INFO


def test_json_lines_parse_with_their_fields(restored_logging: None) -> None:
    stream = io.StringIO()
    configure_logging("auto", "info", stream=stream)  # not a terminal: JSON
    log = logging.getLogger("server.lifecycle")
    log.info("round %d of job %s opened", 2, "j1", extra={"job_id": "j1", "round": 2})
    log.debug("not shown at INFO")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("with a traceback")
    lines = [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]
    assert len(lines) == 2
    first = lines[0]
    assert first["level"] == "INFO" and first["logger"] == "server.lifecycle"
    assert first["message"] == "round 2 of job j1 opened"
    assert first["job_id"] == "j1" and first["round"] == 2 and first["ts"].endswith("+00:00")
    assert "ValueError: boom" in lines[1]["exception"]


def test_text_lines_are_readable(restored_logging: None) -> None:
    stream = io.StringIO()
    configure_logging("text", "info", stream=stream)
    configure_logging("text", "info", stream=stream)  # a second call replaces the handler
    logging.getLogger("server.lifecycle").warning("job j1 failed: x", extra={"job_id": "j1"})
    (line,) = stream.getvalue().splitlines()
    assert " WARNING " in line and line.endswith("job j1 failed: x  job_id=j1")
    assert line[:4].isdigit()  # the timestamp first
