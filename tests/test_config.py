"""Settings: the connection pool is derived from, and checked against, the thread budget; the
development key is refused outside development, and logged once within it."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from server import config
from server.config import BACKGROUND_DB_THREADS, DEVELOPMENT_OPERATOR_KEY, Settings
from server.main import create_app

KEY = "test-operator-key-0123456789"


def settings(**values: Any) -> Settings:
    return Settings(environment="production", operator_keys=[KEY], **values)


def test_the_pool_is_derived_from_the_thread_budget() -> None:
    default = settings()
    assert default.request_threads == 16
    # Every connection the threads may hold stays open: an overflow one would be closed when
    # given back, and opened again by the next burst.
    assert (default.pool_size, default.pool_max_overflow) == (16 + BACKGROUND_DB_THREADS, 0)
    small = settings(request_threads=4)
    assert (small.pool_size, small.pool_max_overflow) == (4 + BACKGROUND_DB_THREADS, 0)
    assert settings(request_threads=100, database_pool_size=20).pool_max_overflow == 82


def test_a_pool_smaller_than_the_thread_budget_is_refused() -> None:
    with pytest.raises(ValidationError) as caught:
        settings(request_threads=40, database_pool_size=10, database_max_overflow=20)
    message = str(caught.value)
    assert "30 connections, fewer than the 42 threads" in message
    assert "FLAAS_REQUEST_THREADS" in message
    with pytest.raises(ValidationError, match="fewer than the 42 threads"):
        settings(request_threads=40, database_pool_size=10, database_max_overflow=5)


def test_a_pool_at_least_the_thread_budget_is_accepted() -> None:
    explicit = settings(request_threads=8, database_pool_size=5, database_max_overflow=5)
    assert explicit.pool_size + explicit.pool_max_overflow == 10
    assert settings(request_threads=8, database_pool_size=50).pool_max_overflow == 0


def test_the_development_key_is_refused_outside_development() -> None:
    with pytest.raises(ValidationError, match="refused outside development"):
        Settings(environment="production", operator_keys=[DEVELOPMENT_OPERATOR_KEY])


def test_the_development_key_is_one_log_line_not_a_python_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config._warn_development_key.cache_clear()  # once per process: this test's process
    places = {
        "database_url": f"sqlite:///{tmp_path / 'flaas.db'}",
        "storage_url": f"file://{tmp_path / 'adapters'}",
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a Python warning would be an exception here
        development = Settings(
            environment="development", operator_keys=[DEVELOPMENT_OPERATOR_KEY], **places
        )
        with caplog.at_level(logging.WARNING, logger="server"):
            create_app(settings(**places))  # keys of its own: nothing to say
            create_app(development)
            create_app(development)  # a second coordinator in the process says nothing more
    lines = [r for r in caplog.records if "development operator key" in r.getMessage()]
    assert len(lines) == 1, lines
    assert lines[0].name == "server.config" and lines[0].levelno == logging.WARNING
    assert "set FLAAS_OPERATOR_KEYS" in lines[0].getMessage()
