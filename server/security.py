"""Secrets: join tokens and client credentials are random, shown once and stored as SHA-256;
every secret a request presents is read from its header exactly as sent."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable

JOIN_TOKEN_PREFIX = "flj_"
CLIENT_CREDENTIAL_PREFIX = "flc_"


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
