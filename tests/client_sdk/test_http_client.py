"""ApiClient: retries with backoff on transient failures, typed errors on 4xx, streamed upload."""

from __future__ import annotations

import hashlib
import json

import httpx
import pytest

from client_sdk.api import (
    ApiClient,
    Conflict,
    Gone,
    Rejected,
    RetryPolicy,
    Unauthorized,
    Unavailable,
    retry_after_seconds,
)

SERVER = "http://coordinator.test"


def make(handler, attempts: int = 4, **kwargs) -> tuple[ApiClient, list[float]]:
    sleeps: list[float] = []
    api = ApiClient(
        SERVER,
        token="cred",
        transport=httpx.MockTransport(handler),
        retry=RetryPolicy(attempts=attempts, base_s=0.5, max_s=8.0),
        sleep=sleeps.append,
        **kwargs,
    )
    return api, sleeps


def test_5xx_and_connection_errors_are_retried_with_growing_jittered_delays() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) == 1:
            raise httpx.ConnectError("refused", request=request)
        if len(calls) < 4:
            return httpx.Response(503, json={"detail": "busy"})
        return httpx.Response(200, json={"action": "wait", "retry_after": 1.0, "reason": "x"})

    api, sleeps = make(handler)
    assert api.task()["action"] == "wait"
    assert len(calls) == 4 and all(c.headers["authorization"] == "Bearer cred" for c in calls)
    # base 0.5 * 2**n, each scaled by a factor in [0.5, 1]
    for n, delay in enumerate(sleeps):
        assert 0.25 * 2**n <= delay <= 0.5 * 2**n


def test_429_honours_retry_after_and_gives_up_with_unavailable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, headers={"Retry-After": "3"}, json={"detail": "slow down"})

    api, sleeps = make(handler, attempts=3)
    with pytest.raises(Unavailable, match="failed 3 times; last: 429: slow down"):
        api.task()
    assert sleeps == [3.0, 3.0]
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert retry_after_seconds("junk") is None and retry_after_seconds(None) is None


def test_an_upload_whose_body_stalled_is_sent_again() -> None:
    bodies = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(request.read())
        if len(bodies) == 1:  # the coordinator's idle timeout: nothing was stored
            return httpx.Response(408, json={"detail": "no part of the update arrived for 30 s"})
        return httpx.Response(201, json={"status": "accepted"})

    api, sleeps = make(handler)
    status, _ = api.upload("/api/v1/rounds/r/update", b"adapter", n_samples=3, sha256="ab")
    assert status == 201 and bodies == [b"adapter", b"adapter"] and len(sleeps) == 1


@pytest.mark.parametrize(
    ("status", "error"), [(401, Unauthorized), (409, Conflict), (410, Gone), (422, Rejected)]
)
def test_4xx_raises_a_typed_error_with_the_servers_detail_without_retrying(status, error) -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(status, json={"detail": "lora_B has shape (4, 2), expected (4, 8)"})

    api, sleeps = make(handler)
    with pytest.raises(error) as caught:
        api.task()
    assert caught.value.status == status and "expected (4, 8)" in caught.value.detail
    assert len(calls) == 1 and sleeps == []


def test_upload_streams_chunks_with_sha_samples_metrics_and_content_length() -> None:
    payload = bytes(range(256)) * 40  # 10,240 bytes -> 3 chunks of 4 KiB
    received = []
    progress: list[tuple[int, int | None]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        received.append(request)
        body = b"".join(request.stream)
        status = 201 if len(received) == 2 else 500
        return httpx.Response(status, json={"sha256": hashlib.sha256(body).hexdigest()})

    api, _ = make(handler, chunk_bytes=4096)
    sha = hashlib.sha256(payload).hexdigest()
    status, body = api.upload(
        "/api/v1/rounds/r1/update",
        payload,
        n_samples=42,
        sha256=sha,
        metrics={"val_accuracy": 0.5},
        on_bytes=lambda done, total: progress.append((done, total)),
    )
    assert status == 201 and body["sha256"] == sha  # the retry re-sent the whole body
    request = received[-1]
    assert request.method == "PUT"
    assert request.headers["content-length"] == str(len(payload))
    assert "transfer-encoding" not in request.headers
    assert request.headers["flaas-content-sha256"] == sha
    assert request.headers["flaas-num-samples"] == "42"
    assert json.loads(request.headers["flaas-metrics"]) == {"val_accuracy": 0.5}
    assert progress[-3:] == [(4096, 10240), (8192, 10240), (10240, 10240)]


def test_download_reports_progress_and_restarts_a_truncated_body() -> None:
    payload = b"x" * 5000
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        body = payload[:100] if len(calls) == 1 else payload  # first answer is cut short
        return httpx.Response(200, content=body, headers={"Content-Length": str(len(payload))})

    api, sleeps = make(handler)
    seen: list[tuple[int, int | None]] = []
    assert api.download("/a", lambda d, t: seen.append((d, t))) == payload
    assert len(calls) == 2 and len(sleeps) == 1 and seen[-1] == (5000, 5000)


def test_a_long_polled_task_request_sends_wait_and_reads_longer_than_it() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"action": "wait", "retry_after": 0, "reason": "r"})

    api, _ = make(handler, timeout=httpx.Timeout(5.0))
    api.task(wait=25)
    api.task()
    held, polled = seen
    assert held.url.params["wait"] == "25"
    assert held.extensions["timeout"]["read"] > 25  # the wait never times out the read
    assert "wait" not in polled.url.params  # wait=0: the plain request an old server knows
    assert polled.extensions["timeout"]["read"] == 5.0
