"""One sentence for an expected failure of a ``flaas`` command (never a traceback).

The CLI's entry point catches what a person can act on (the coordinator unreachable, a 4xx
with its ``detail``, a missing file, a value out of range, a missing extra) and prints one
line; anything else is a bug and keeps its traceback. Only the standard library is imported
at module level: the base install must be able to report its own errors.
"""

from __future__ import annotations

from typing import Any


def one_line(text: str) -> str:
    """``text`` with its lines joined by ``; `` (a message printed as one line)."""
    parts = (part.strip().rstrip(";").strip() for part in str(text).splitlines())
    return "; ".join(part for part in parts if part)


def _validation_sentence(exc: Any) -> str:
    errors = exc.errors()
    if not errors:
        return one_line(str(exc))
    first = errors[0]
    where = ".".join(str(part) for part in first.get("loc", ()))
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return one_line(f"invalid {exc.title}: {where + ': ' if where else ''}{message}{more}")


def error_sentence(exc: BaseException) -> str | None:
    """The sentence to print for ``exc``, or None when it is not an expected failure."""
    import httpx
    from pydantic import ValidationError

    from client_sdk.api import ApiError, Unavailable

    if isinstance(exc, ApiError):
        detail = exc.detail if isinstance(exc.detail, str) else str(exc)
        return one_line(f"{exc.status}: {detail}")
    if isinstance(exc, Unavailable):
        return one_line(f"the coordinator could not be reached: {exc}")
    if isinstance(exc, httpx.TransportError):
        url = exc.request.url if _has_request(exc) else "the coordinator"
        return one_line(f"cannot reach {url}: {exc or type(exc).__name__}")
    if isinstance(exc, ValidationError):
        return _validation_sentence(exc)
    if isinstance(exc, ImportError) and exc.name:
        return (
            f"{exc.name} is not installed: this command needs an extra "
            "(pip install 'flaas[train]' to train, 'flaas[server]' to run a coordinator)"
        )
    if isinstance(exc, OSError):
        if exc.filename is not None and exc.strerror:
            return f"{exc.filename}: {exc.strerror}"
        return one_line(str(exc) or type(exc).__name__)
    if isinstance(exc, ValueError):
        return one_line(str(exc) or type(exc).__name__)
    return _yaml_sentence(exc)


def _has_request(exc: Any) -> bool:
    try:
        exc.request  # noqa: B018 - httpx raises RuntimeError when the error has no request
    except RuntimeError:
        return False
    return True


def _yaml_sentence(exc: BaseException) -> str | None:
    try:
        import yaml
    except ImportError:
        return None
    if isinstance(exc, yaml.YAMLError):
        return one_line(f"invalid YAML: {exc}")
    return None
