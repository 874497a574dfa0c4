"""How the coordinator is served: uvicorn with its limits, shared by ``flaas serve`` and the
embedded coordinator.

uvicorn bounds a request head's size (h11's 16 KiB) and the idle time between requests on a
kept-alive connection (``timeout_keep_alive``), but not the time a head takes to arrive: a
client that sends half a head and then nothing (a "slowloris") keeps its connection, and a
slot of the process's file descriptors, for ever. ``HeadTimeoutProtocol`` closes a
connection whose head is not complete within ``request_head_timeout_s`` of the connection
opening or of the previous response. A stalled body is the upload route's to time out (it
knows where a body is expected: ``upload_idle_timeout_s``, answered 408).

``serve`` runs one coordinator process, or several on one port (``flaas serve --workers N``).

Each serving process settles its heap before it serves (``settle_heap``): Python's cyclic
collector stops the whole process, event loop and request threads alike, while it walks a
generation, and a full collection walks every object the process holds, so those run on a
clock (``CollectionClock``, ``FLAAS_GC_FULL_INTERVAL_S``) rather than as the heap grows.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from server.config import Settings

log = logging.getLogger(__name__)


def head_timeout_protocol(seconds: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol, closing connections whose request head takes over ``seconds``."""

    class HeadTimeoutProtocol(H11Protocol):
        head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._await_head()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:  # the head is complete
                self._cancel_head_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.conn.their_state is h11.IDLE:  # a next request may start now
                self._await_head()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_head_timer()
            super().connection_lost(exc)

        def _await_head(self) -> None:
            self._cancel_head_timer()
            self.head_timer = self.loop.call_later(seconds, self._head_timed_out)

        def _cancel_head_timer(self) -> None:
            if self.head_timer is not None:
                self.head_timer.cancel()
                self.head_timer = None

        def _head_timed_out(self) -> None:
            self.head_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

    return HeadTimeoutProtocol


def uvicorn_config(app: Any, settings: Settings, host: str, port: int) -> uvicorn.Config:
    """uvicorn's configuration for the coordinator: logging is ``observability.logs``'s
    (uvicorn's own and its access log are off: the app logs each request itself)."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=head_timeout_protocol(settings.request_head_timeout_s),
        access_log=False,
        log_config=None,
        log_level=None,
    )


def serve(settings: Settings, host: str, port: int, processes: int) -> None:
    """Serve the coordinator on ``host:port`` until stopped: in this process, or in
    ``processes`` forked ones sharing one listening socket (each its own app, event loop,
    request threads and database pool; the kernel hands each connection to one of them).

    A coordinator process runs Python under one GIL, so its request throughput is bounded by
    one core (README, "Concurrency model"); several processes use several. They learn of each
    other's transitions through Redis (``server.notify``), which ``flaas serve`` requires for
    ``--workers`` above 1. SIGTERM or SIGINT stops them all; if one dies, the rest are
    stopped and the command fails, for the supervisor (systemd, Docker) to restart it whole.
    """
    from server.main import create_app

    if processes == 1:
        app = create_app(settings)
        settle_heap(settings.gc_full_interval_s)
        uvicorn.Server(uvicorn_config(app, settings, host, port)).run()
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(LISTEN_BACKLOG)
    children = [_fork_server(create_app, settings, listener, host, port) for _ in range(processes)]
    listener.close()
    _supervise(children)


LISTEN_BACKLOG = 2048  # uvicorn's default
#: The collector's thresholds in a serving process (Python's are 700, 10, 10): a young
#: collection every 10,000 net allocations instead of 700, a middle one every 2 young ones, and
#: no full collection of the collector's own (its counter never reaches the third): the
#: ``CollectionClock`` runs those.
GC_THRESHOLDS = (10_000, 2, 2**31 - 1)
#: A serving process's young objects are collected at least this often, whatever the
#: collector counted: its count is allocations less deallocations of any age, so while old
#: objects die (the requests a round's opening answers) young ones pile up uncounted, 75,000 to
#: 210,000 of them at 10,000 waiting clients, a young or middle collection then taking 30-146 ms.
YOUNG_INTERVAL_S = 0.25


def settle_heap(full_interval_s: float) -> CollectionClock:
    """Move what start-up built (the imports and the app, about 300,000 objects) out of the
    collector's reach for good (``gc.freeze``), collect young objects less often by count
    (``GC_THRESHOLDS``) and by time, and old ones by time only; returns the started clock.

    A full collection walks every object the process holds, the GIL held: 0.7-1.1 s at 10,000
    waiting clients (1.0-1.7 million objects), and Python runs one each time the old
    generation has grown by a quarter since the last, so several while a fleet enrols and
    the heap grows to its working size; they found almost nothing (0-2,444 objects). Once
    every ``full_interval_s`` frees what cyclic garbage reached the old generation all the
    same. Middle collections every 2 young ones instead of 10, and young ones at least every
    ``YOUNG_INTERVAL_S``, walk fewer objects each time. Numbers: bench/load.py, README.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    clock = CollectionClock(full_interval_s)
    clock.start()
    return clock


class CollectionClock(threading.Thread):
    """A young collection (and a middle one every ``GC_THRESHOLDS[1]`` of them) every
    ``YOUNG_INTERVAL_S``, and a full one (logged) every ``full_interval_s``, on a daemon thread
    of its own."""

    def __init__(self, full_interval_s: float) -> None:
        super().__init__(name="flaas-collections", daemon=True)
        self.full_interval_s = full_interval_s
        self._stopped = threading.Event()

    def run(self) -> None:
        full_at = time.monotonic() + self.full_interval_s
        while not self._stopped.wait(min(YOUNG_INTERVAL_S, self.full_interval_s)):
            if time.monotonic() < full_at:
                # The middle generation too when its turn has come, as the thresholds say: a
                # collection by count would seldom come (each young one resets the count).
                gc.collect(1 if gc.get_count()[1] >= GC_THRESHOLDS[1] else 0)
                continue
            started = time.perf_counter()
            found = gc.collect()
            log.info(
                "full collection: %d unreachable objects in %.0f ms",
                found,
                (time.perf_counter() - started) * 1000,
            )
            full_at = time.monotonic() + self.full_interval_s

    def stop(self) -> None:
        """Run no more collections (one under way finishes)."""
        self._stopped.set()


def _fork_server(
    create_app: Callable[[Settings], Any],
    settings: Settings,
    listener: socket.socket,
    host: str,
    port: int,
) -> int:
    """A child process serving a new app on ``listener`` (its pid, in the parent)."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        config = uvicorn_config(create_app(settings), settings, host, port)
        settle_heap(settings.gc_full_interval_s)
        uvicorn.Server(config).run(sockets=[listener])
        code = 0
    finally:
        os._exit(code)  # never return into the parent's code


def _supervise(children: list[int]) -> None:
    running = set(children)
    stopping = False

    def stop(_signum: int = 0, _frame: Any = None) -> None:
        nonlocal stopping
        stopping = True
        for pid in running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    failed = False
    while running:
        pid, status = os.wait()
        running.discard(pid)
        code = os.waitstatus_to_exitcode(status)
        if not stopping:
            log.error("coordinator process %d exited (%d): stopping the others", pid, code)
            failed = True
            stop()
    if failed:
        raise SystemExit(1)
