"""How the coordinator is served: uvicorn with its limits, shared by ``flaas serve`` and the
embedded coordinator.

uvicorn bounds a request head's size (h11's 16 KiB) and the idle time between requests on a
kept-alive connection (``timeout_keep_alive``), but not the time a head takes to arrive: a
client that sends half a head and then nothing (a "slowloris") keeps its connection, and a
slot of the process's file descriptors, for ever. ``HeadTimeoutProtocol`` closes a
connection whose head is not complete within ``request_head_timeout_s`` of the connection
opening or of the previous response. A stalled body is the upload route's to time out (it
knows where a body is expected: ``upload_idle_timeout_s``, answered 408).
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from server.config import Settings


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
