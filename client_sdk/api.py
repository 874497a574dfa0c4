"""The client's HTTP layer: one coordinator, timeouts, retries, typed errors (no torch).

Transient failures (connection errors, timeouts, 5xx, 429, and 408: the coordinator dropped a
body that stalled, nothing was stored) are retried with exponential backoff and jitter;
``Retry-After`` is honoured (docs/protocol.md, "Retries"). Any other 4xx is never retried: it
raises a
:class:`ApiError` subclass carrying the server's ``detail``. Uploads are safe to retry because
they carry ``Flaas-Content-Sha256``: the coordinator answers an identical retry with 200.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

#: ``on_bytes(done, total)``: called as a transfer progresses.
ByteProgress = Callable[[int, int | None], None]

DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=60.0, write=60.0, pool=10.0)
# A long-polled task request may be silent for its whole wait: its read timeout is the wait
# plus this much (the coordinator's answer, a slow network).
LONG_POLL_MARGIN_S = 15.0
UPLOAD_CHUNK_BYTES = 64 * 1024
# 4xx answers that ask for the same request again: 408 (the body stalled and was dropped) and
# 429 (too many requests); every other 4xx says the request itself must change.
RETRIED_4XX = frozenset({408, 429})


class ApiError(Exception):
    """The coordinator refused a request (4xx): ``status`` and the server's ``detail``."""

    def __init__(self, status: int, detail: Any, method: str = "", url: str = "") -> None:
        self.status = status
        self.detail = detail
        text = detail if isinstance(detail, str) else json.dumps(detail)
        super().__init__(f"{method} {url} -> {status}: {text}".strip())


class Unauthorized(ApiError):
    """401: missing, wrong or revoked join token / credential."""


class Forbidden(ApiError):
    """403: the resource belongs to another job."""


class NotFound(ApiError):
    """404: no such job or round."""


class Conflict(ApiError):
    """409: not sampled for this round, or a different update was already accepted."""


class Gone(ApiError):
    """410: the round or job no longer takes this request (deadline passed, job ended)."""


class PayloadTooLarge(ApiError):
    """413: the update or one of its headers is over the coordinator's limit."""


class Rejected(ApiError):
    """422: the request broke the contract (e.g. an adapter tensor of the wrong shape)."""


class Unavailable(Exception):
    """The coordinator could not be reached (or kept failing) after every retry."""


_BY_STATUS: dict[int, type[ApiError]] = {
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    410: Gone,
    413: PayloadTooLarge,
    422: Rejected,
}


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of one request: ``attempts`` in all, delays ``base_s * 2**n`` capped at
    ``max_s``, each scaled by a random factor in [0.5, 1] so that many clients de-synchronise."""

    attempts: int = 6
    base_s: float = 0.5
    max_s: float = 30.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (``attempt`` counts from 0)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_s)
        return min(self.base_s * 2.0**attempt, self.max_s) * random.uniform(0.5, 1.0)


def retry_after_seconds(value: str | None) -> float | None:
    """``Retry-After`` as seconds: a number, or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        return max(parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
    except (TypeError, ValueError):
        return None


def _detail(response: httpx.Response) -> Any:
    try:
        body = response.json()
    except ValueError:
        return response.text[:2000]
    return body.get("detail", body) if isinstance(body, dict) else body


class ApiClient:
    """Requests to one coordinator, authenticated with ``token`` when it is set.

    ``transport`` and ``sleep`` are injectable for tests; ``http`` reuses one connection pool.
    """

    def __init__(
        self,
        server: str,
        token: str | None = None,
        *,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        chunk_bytes: int = UPLOAD_CHUNK_BYTES,
    ) -> None:
        self.server = server.rstrip("/")
        self.token = token
        self.retry = retry or RetryPolicy()
        self.chunk_bytes = chunk_bytes
        self._sleep = sleep
        self._http = httpx.Client(base_url=self.server, timeout=timeout, transport=transport)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ core

    def request(
        self,
        method: str,
        url: str,
        *,
        token: str | None = None,
        headers: Mapping[str, str] | None = None,
        body: Callable[[], bytes | Iterator[bytes]] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """Send with retries; returns the 2xx response or raises ApiError / Unavailable.

        ``body`` is a factory so that every attempt streams a fresh copy of the content.
        """
        bearer = token or self.token
        auth = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        all_headers = {**auth, **(headers or {})}
        last: str = ""
        for attempt in range(self.retry.attempts):
            retry_after: float | None = None
            try:
                content = body() if body is not None else None
                response = self._http.request(
                    method, url, headers=all_headers, content=content, **kwargs
                )
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code < 400:
                    return response
                if response.status_code in RETRIED_4XX or response.status_code >= 500:
                    last = f"{response.status_code}: {_detail(response)}"
                    retry_after = retry_after_seconds(response.headers.get("retry-after"))
                else:
                    error = _BY_STATUS.get(response.status_code, ApiError)
                    raise error(response.status_code, _detail(response), method, url)
            if attempt + 1 < self.retry.attempts:
                self._sleep(self.retry.delay(attempt, retry_after))
        raise Unavailable(
            f"{method} {self.server}{url} failed {self.retry.attempts} times; last: {last}"
        )

    # ------------------------------------------------------------------ the client API

    def enrol(
        self,
        job_id: str,
        join_token: str,
        stats: Mapping[str, Any],
        *,
        name: str | None = None,
        max_rank: int | None = None,
        model_sha256: str | None = None,
        credential: str | None = None,
    ) -> dict[str, Any]:
        """``POST /api/v1/jobs/{id}/clients``: ``{client_id, job_id, credential, rank}``.

        With a ``credential`` drawn by the device the request is safe to retry: the same
        enrolment again answers 200 with the same client."""
        payload: dict[str, Any] = {"stats": dict(stats)}
        if model_sha256 is not None:
            payload["model_sha256"] = model_sha256
        if credential is not None:
            payload["credential"] = credential
        if name is not None:
            payload["name"] = name
        if max_rank is not None:
            payload["max_rank"] = max_rank
        encoded = json.dumps(payload).encode()
        response = self.request(
            "POST",
            f"/api/v1/jobs/{job_id}/clients",
            token=join_token,
            headers={"Content-Type": "application/json"},
            body=lambda: encoded,
        )
        result: dict[str, Any] = response.json()
        return result

    def job_model(self, job_id: str, join_token: str) -> dict[str, Any]:
        """``GET /api/v1/jobs/{id}/model``: the job's model section and training settings."""
        result: dict[str, Any] = self.request(
            "GET", f"/api/v1/jobs/{job_id}/model", token=join_token
        ).json()
        return result

    def task(self, wait: float = 0.0) -> dict[str, Any]:
        """``GET /api/v1/clients/me/task``: a wait, train or finished task (a JSON object).

        With ``wait`` > 0 the coordinator may hold the request up to ``wait`` seconds until
        the answer changes (long-poll); the read timeout of this request is raised above it.
        """
        if wait <= 0:
            result: dict[str, Any] = self.request("GET", "/api/v1/clients/me/task").json()
            return result
        base = self._http.timeout
        timeout = httpx.Timeout(
            connect=base.connect,
            read=max(base.read or 0.0, wait + LONG_POLL_MARGIN_S),
            write=base.write,
            pool=base.pool,
        )
        result = self.request(
            "GET", "/api/v1/clients/me/task", params={"wait": wait}, timeout=timeout
        ).json()
        return result

    def download(self, url: str, on_bytes: ByteProgress | None = None) -> bytes:
        """Download ``url`` (e.g. a round's adapter) whole, streaming it in chunks."""
        for attempt in range(self.retry.attempts):
            try:
                return self._download_once(url, on_bytes)
            except (httpx.TransportError, _Truncated) as exc:
                if attempt + 1 == self.retry.attempts:
                    raise Unavailable(f"GET {self.server}{url} failed: {exc}") from exc
                self._sleep(self.retry.delay(attempt))
        raise AssertionError("unreachable")

    def _download_once(self, url: str, on_bytes: ByteProgress | None) -> bytes:
        # Opening the stream goes through request()'s retries for 5xx/408/429; a connection
        # dropped mid-body surfaces here as a TransportError and restarts the download.
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        with self._http.stream("GET", url, headers=headers) as response:
            if response.status_code >= 400:
                response.read()
                if response.status_code in RETRIED_4XX or response.status_code >= 500:
                    return self.request("GET", url).content
                error = _BY_STATUS.get(response.status_code, ApiError)
                raise error(response.status_code, _detail(response), "GET", url)
            declared = response.headers.get("content-length")
            total = int(declared) if declared and declared.isdigit() else None
            data = bytearray()
            for chunk in response.iter_bytes():
                data += chunk
                if on_bytes is not None:
                    on_bytes(len(data), total)
        if total is not None and len(data) != total:
            raise _Truncated(f"got {len(data)} of {total} bytes")
        return bytes(data)

    def upload(
        self,
        url: str,
        data: bytes,
        *,
        n_samples: int,
        sha256: str,
        metrics: Mapping[str, float] | None = None,
        on_bytes: ByteProgress | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """``PUT`` an update; returns ``(201 accepted | 200 identical retry, update JSON)``.

        The body is streamed in chunks (progress per chunk) with an explicit Content-Length.
        """
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Length": str(len(data)),
            "Flaas-Num-Samples": str(int(n_samples)),
            "Flaas-Content-Sha256": sha256,
        }
        if metrics:
            headers["Flaas-Metrics"] = json.dumps(dict(metrics), separators=(",", ":"))

        def chunks() -> Iterator[bytes]:
            for start in range(0, len(data), self.chunk_bytes):
                yield data[start : start + self.chunk_bytes]
                if on_bytes is not None:
                    on_bytes(min(start + self.chunk_bytes, len(data)), len(data))

        response = self.request("PUT", url, headers=headers, body=chunks)
        return response.status_code, response.json()


class _Truncated(Exception):
    """A download ended before its Content-Length."""
