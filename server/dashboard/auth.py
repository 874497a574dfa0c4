"""Dashboard sessions: the operator key exchanged for a signed, expiring cookie.

The token is ``<expiry>.<nonce>.<hmac>``, where the HMAC-SHA256 is keyed by the operator
key that logged in. Nothing is stored server-side, every coordinator process accepts it, and
removing a key from ``FLAAS_OPERATOR_KEYS`` ends the sessions it opened. Logging out clears
the cookie; a copied token stays valid until it expires (``SESSION_SECONDS``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Iterable

COOKIE_NAME = "flaas_session"
SESSION_SECONDS = 12 * 3600
MAX_TOKEN_CHARS = 256  # an issued token has about 96
_CONTEXT = b"flaas-dashboard-session-v1:"


def _mac(key: str, payload: str) -> str:
    return hmac.new(key.encode("utf-8"), _CONTEXT + payload.encode(), hashlib.sha256).hexdigest()


def issue_session(operator_key: str, *, now: float | None = None) -> str:
    """A session token for ``operator_key``, valid for ``SESSION_SECONDS``."""
    expires = int((time.time() if now is None else now) + SESSION_SECONDS)
    payload = f"{expires}.{secrets.token_urlsafe(12)}"
    return f"{payload}.{_mac(operator_key, payload)}"


def session_is_valid(token: str | None, keys: Iterable[str], *, now: float | None = None) -> bool:
    """Whether ``token`` was issued for one of ``keys`` and has not expired."""
    # Anything but the issued shape is refused before parsing: Python's int() raises on more
    # than 4,300 digits (and on Unicode digits), compare_digest on non-ASCII text.
    if not token or len(token) > MAX_TOKEN_CHARS or not token.isascii() or token.count(".") != 2:
        return False
    payload, _, mac = token.rpartition(".")
    expires = payload.split(".", 1)[0]
    if not expires.isdigit() or len(expires) > 12:
        return False
    if int(expires) < (time.time() if now is None else now):
        return False
    found = False
    for key in keys:
        found |= hmac.compare_digest(mac, _mac(key, payload))
    return found
