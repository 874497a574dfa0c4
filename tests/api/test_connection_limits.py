"""The coordinator under uvicorn (``server.serving``): heads that never finish, bodies that
stall, and a chunked upload over the cap are cut off instead of being read for ever."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from server.db.migrate import upgrade
from server.main import create_app
from server.serving import uvicorn_config
from tests.api.conftest import RunningJob, start_job
from tests.live import free_port
from tests.support import adapter_bytes, settings_for

CAP = 64 * 1024


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, RunningJob]]:
    tmp: Path = tmp_path_factory.mktemp("served")
    settings = settings_for(
        f"sqlite:///{tmp / 'db.sqlite'}",
        tmp / "adapters",
        max_upload_bytes=CAP,
        request_head_timeout_s=0.5,
        upload_idle_timeout_s=0.5,
    )
    upgrade(settings.database_url)
    port = free_port()
    server = uvicorn.Server(uvicorn_config(create_app(settings), settings, "127.0.0.1", port))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        running = start_job(http)  # type: ignore[arg-type]
    yield port, running
    server.should_exit = True
    thread.join(10)


def _task(served: tuple[int, RunningJob], index: int) -> dict[str, Any]:
    port, running = served
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        task: dict[str, Any] = http.get(
            "/api/v1/clients/me/task", headers=running.headers(index)
        ).json()
    return task


def _upload_head(served: tuple[int, RunningJob], framing: str, index: int = 0) -> bytes:
    path = "/api/v1/rounds/" + _task(served, index)["round_id"] + "/update"
    auth = served[1].headers(index)["Authorization"]
    return (
        f"PUT {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n"
        f"Flaas-Num-Samples: 3\r\n{framing}\r\n\r\n"
    ).encode()


def _closed_within(sock: socket.socket, seconds: float) -> tuple[bytes, bool]:
    """What the server sent, and whether it closed the connection within ``seconds``."""
    sock.settimeout(seconds)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except TimeoutError:
        return received, False
    except ConnectionResetError:
        pass
    return received, True


def test_a_head_that_never_finishes_is_closed(served: tuple[int, RunningJob]) -> None:
    with socket.create_connection(("127.0.0.1", served[0])) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        started = time.monotonic()
        received, closed = _closed_within(sock, 5)
    assert closed and received == b""
    assert time.monotonic() - started < 3


def test_a_stalled_upload_body_is_408_and_closed(served: tuple[int, RunningJob]) -> None:
    with socket.create_connection(("127.0.0.1", served[0])) as sock:
        sock.sendall(_upload_head(served, "Content-Length: 5000") + b"x" * 100)
        received, closed = _closed_within(sock, 5)
    assert received.startswith(b"HTTP/1.1 408"), received[:200]
    assert b"connection: close" in received.lower() and closed


def test_an_upload_body_that_keeps_arriving_is_read_to_its_end(
    served: tuple[int, RunningJob],
) -> None:
    # The idle timeout (0.5 s) counts from the last part of the body, not from its first.
    body = adapter_bytes(_task(served, 1)["rank"])
    parts = [body[i : i + len(body) // 4 + 1] for i in range(0, len(body), len(body) // 4 + 1)]
    with socket.create_connection(("127.0.0.1", served[0])) as sock:
        sock.sendall(_upload_head(served, f"Content-Length: {len(body)}", index=1))
        for part in parts:
            time.sleep(0.25)
            sock.sendall(part)
        sock.settimeout(5)
        received = sock.recv(65536)
    assert len(parts) * 0.25 > 0.5
    assert received.startswith(b"HTTP/1.1 201"), received[:300]


def test_a_chunked_upload_over_the_cap_is_cut_off_at_the_cap(
    served: tuple[int, RunningJob],
) -> None:
    chunk = b"4000\r\n" + b"x" * 0x4000 + b"\r\n"  # 16 KiB chunks, for ever
    sent = 0
    with socket.create_connection(("127.0.0.1", served[0])) as sock:
        sock.sendall(_upload_head(served, "Transfer-Encoding: chunked"))
        sock.settimeout(0.05)
        received = b""
        while not received and sent < 100 * CAP:
            try:
                sock.sendall(chunk)
                sent += len(chunk)
                received = sock.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
        rest, closed = _closed_within(sock, 5)
    assert (received + rest).startswith(b"HTTP/1.1 413"), (received + rest)[:200]
    assert closed
    # Refused at the cap: what was sent beyond it is what the sockets' buffers took.
    assert sent < 40 * CAP
