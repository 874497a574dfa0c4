"""Domain errors. Services raise these; ``server.api.errors`` maps each class to one HTTP status.

Every message is written for the person who must act on it: it names the job, round,
client or tensor involved and says what would be accepted instead.
"""

from __future__ import annotations


class DomainError(Exception):
    """Base class of every error a service raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(DomainError):
    """The resource does not exist (or is not visible to the caller)."""


class InvalidRequest(DomainError):
    """The request is well-formed but its content breaks a rule (bad job spec, bad header)."""


class Conflict(DomainError):
    """The request contradicts the current state (a duplicate update, an unsampled client)."""


class NotExportable(Conflict):
    """A job's global adapter cannot be exported in the asked format (the message says why)."""


class Gone(DomainError):
    """The request came too late: the round or job it targets has moved on."""


class Forbidden(DomainError):
    """Authenticated, but the resource belongs to another job."""


class Unauthorized(DomainError):
    """Missing or invalid credentials."""


class PayloadTooLarge(DomainError):
    """An upload or its header exceeds a configured limit."""


class RequestTimeout(DomainError):
    """The client stopped sending a request's body before its end."""


class AdapterRejected(DomainError):
    """An uploaded adapter breaks the upload contract (docs/upload-contract.md)."""

    def __init__(self, message: str, tensor: str | None = None) -> None:
        super().__init__(message)
        self.tensor = tensor


class ServiceUnavailable(DomainError):
    """A dependency (database, storage) cannot be reached right now."""
