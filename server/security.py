"""Secrets: join tokens and client credentials are random, shown once and stored as SHA-256;
every secret a request presents is read from its header exactly as sent.

Operator sessions: the dashboard's login exchanges the operator key for a signed, expiring
cookie (``SESSION_COOKIE``), which the API accepts as operator authentication. The token is
``<expiry>.<nonce>.<hmac>``, where the HMAC-SHA256 is keyed by the operator key that logged in.
Nothing is stored server-side, every coordinator process accepts it, and removing a key from
``FLAAS_OPERATOR_KEYS`` ends the sessions it opened. Logging out clears the cookie; a copied
token stays valid until it expires (``SESSION_SECONDS``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Iterable

from client_sdk.state import CREDENTIAL_PREFIX

JOIN_TOKEN_PREFIX = "flj_"
#: A client credential, drawn by the device (``client_sdk.state.draw_credential``) or by the
#: coordinator for a device that sent none: that format, at least as long.
CLIENT_CREDENTIAL_PATTERN = rf"^{CREDENTIAL_PREFIX}[A-Za-z0-9_-]{{43,128}}$"
SESSION_COOKIE = "flaas_session"
SESSION_SECONDS = 12 * 3600
MAX_SESSION_CHARS = 256  # an issued session token has about 96
_SESSION_CONTEXT = b"flaas-dashboard-session-v1:"


def new_secret(prefix: str) -> str:
    """A 256-bit URL-safe secret with a readable prefix saying what it is."""
    return prefix + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    """SHA-256 hex digest. Secrets are high-entropy, so a fast hash is enough (no KDF needed)."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def matches_any(candidate: str, keys: Iterable[str]) -> bool:
    """Constant-time comparison against every configured key."""
    found = False
    for key in keys:
        found |= hmac.compare_digest(candidate.encode("utf-8"), key.encode("utf-8"))
    return found


def bearer_token_of(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, exactly as sent.

    Nothing is stripped, so ``Bearer  <key>`` or ``Bearer <key><TAB>`` is not ``<key>``: a
    credential must be the one issued, byte for byte. (An HTTP server already drops the
    whitespace at the very end of a header value, which RFC 9110 says is not part of it.)
    """
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def _session_mac(key: str, payload: str) -> str:
    return hmac.new(
        key.encode("utf-8"), _SESSION_CONTEXT + payload.encode(), hashlib.sha256
    ).hexdigest()


def issue_session(operator_key: str, *, now: float | None = None) -> str:
    """A session token for ``operator_key``, valid for ``SESSION_SECONDS``."""
    expires = int((time.time() if now is None else now) + SESSION_SECONDS)
    payload = f"{expires}.{secrets.token_urlsafe(12)}"
    return f"{payload}.{_session_mac(operator_key, payload)}"


def session_is_valid(token: str | None, keys: Iterable[str], *, now: float | None = None) -> bool:
    """Whether ``token`` was issued for one of ``keys`` and has not expired."""
    # Anything but the issued shape is refused before parsing: Python's int() raises on more
    # than 4,300 digits (and on Unicode digits), compare_digest on non-ASCII text.
    if not token or len(token) > MAX_SESSION_CHARS or not token.isascii() or token.count(".") != 2:
        return False
    payload, _, mac = token.rpartition(".")
    expires = payload.split(".", 1)[0]
    if not expires.isdigit() or len(expires) > 12:
        return False
    if int(expires) < (time.time() if now is None else now):
        return False
    found = False
    for key in keys:
        found |= hmac.compare_digest(mac, _session_mac(key, payload))
    return found
