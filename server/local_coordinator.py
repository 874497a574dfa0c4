"""A coordinator inside this process: uvicorn on a background thread, on a free local port.

What ``flaas demo`` runs: SQLite and adapter files under one directory, aggregation by the
embedded worker, a fresh random operator key.
"""

from __future__ import annotations

import secrets
import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported inside the functions: `flaas --help` must stay light
    import httpx


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedCoordinator:
    """The coordinator app under uvicorn on a background thread (``with`` starts and stops it)."""

    def __init__(self, data_dir: Path, port: int | None = None, log_level: str = "warning") -> None:
        from server.config import Settings

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.operator_key = secrets.token_urlsafe(24)
        self.settings = Settings(
            environment="production",
            database_url=f"sqlite:///{data_dir / 'flaas.db'}",
            storage_url=f"file://{data_dir / 'adapters'}",
            operator_keys=[self.operator_key],
            broker_url=None,  # aggregate in this process: the demo runs no separate worker
            public_url=self.url,
            scheduler_interval_s=0.2,
        )
        self.log_level = log_level
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> EmbeddedCoordinator:
        import uvicorn

        from server.db.migrate import upgrade
        from server.main import create_app
        from server.observability.logs import configure_logging
        from server.serving import uvicorn_config

        # The demo's transcript is the output: the coordinator adds only its warnings.
        configure_logging(self.settings.log_format, self.log_level)
        upgrade(self.settings.database_url)
        config = uvicorn_config(create_app(self.settings), self.settings, "127.0.0.1", self.port)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="flaas-demo-server")
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the embedded coordinator did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=15)

    def operator(self) -> httpx.Client:
        """An HTTP client authenticated with the demo's operator key."""
        import httpx

        return httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {self.operator_key}"},
            timeout=30.0,
        )
