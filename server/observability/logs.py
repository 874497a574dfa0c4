"""Log lines for operators: JSON objects for a collector, readable text for a terminal.

Every line has a timestamp, a level, the logger and the message; the fields a call passes
with ``extra=`` (``job_id``, ``round_id``, ``round``, ``client_id``, ...) become keys of
the JSON object, or ``key=value`` pairs after a text line. ``configure_logging`` is called
once by each entry point (``flaas serve``, the embedded coordinator, ``flaas worker`` and
``flaas beat``); uvicorn's and Celery's loggers go through the same handler.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Literal, TextIO

LogFormat = Literal["auto", "json", "text"]

# Attributes every LogRecord has: anything else on a record came from ``extra=``.
# (uvicorn adds ``color_message``: the same message with terminal colours.)
_STANDARD = set(vars(logging.makeLogRecord({}))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}
# Loggers that would otherwise write lines of their own, or none at all.
_ROUTED = ("uvicorn", "uvicorn.error", "uvicorn.access", "celery")


def _fields(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``message``, the extras."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``2025-01-01T12:00:00.000+00:00 INFO  server.lifecycle  message  key=value ...``"""

    def format(self, record: logging.LogRecord) -> str:
        extras = "  ".join(f"{k}={v}" for k, v in _fields(record).items() if v is not None)
        line = f"{_timestamp(record)} {record.levelname:<7} {record.name}  {record.getMessage()}"
        if extras:
            line += f"  {extras}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class _FlaasHandler(logging.StreamHandler):
    """Marks the handler this module installed, so a second call replaces it."""


def resolve_format(fmt: LogFormat, stream: TextIO) -> Literal["json", "text"]:
    if fmt != "auto":
        return fmt
    return "text" if stream.isatty() else "json"


def configure_logging(
    fmt: LogFormat = "auto", level: int | str = logging.INFO, stream: TextIO | None = None
) -> None:
    """Send every log line at ``level`` or above to ``stream`` (stderr) in ``fmt``."""
    stream = stream or sys.stderr
    handler = _FlaasHandler(stream)
    formatter = JsonFormatter() if resolve_format(fmt, stream) == "json" else TextFormatter()
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _FlaasHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    logging.captureWarnings(True)  # warnings.warn lines in the same format
    for name in _ROUTED:
        routed = logging.getLogger(name)
        routed.handlers.clear()
        routed.propagate = True
        routed.setLevel(logging.NOTSET)
