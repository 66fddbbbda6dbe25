"""Domain errors, raised by services and turned into RFC 9457 problem details by ``app.problems``."""

from __future__ import annotations


class DomainError(Exception):
    """Base class; ``status`` and ``title`` become the problem document."""

    status = 400
    title = "Bad request"
    type_slug = "bad-request"

    def __init__(self, detail: str, *, field: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field


class InvalidField(DomainError):
    """A submitted value is unusable; ``field`` names it, the value is never echoed."""

    status = 422
    title = "Invalid field"
    type_slug = "invalid-field"


class UnknownParameter(DomainError):
    """A query parameter the route does not take; ``field`` names it."""

    status = 400
    title = "Unknown parameter"
    type_slug = "unknown-parameter"


class UnreadableBody(DomainError):
    """The request body as a whole cannot be read: not UTF-8, or nested too deep."""

    status = 400
    title = "Unreadable body"
    type_slug = "unreadable-body"


class TooLarge(DomainError):
    """A body, file or field exceeds its size limit."""

    status = 413
    title = "Payload too large"
    type_slug = "payload-too-large"


class NotFound(DomainError):
    status = 404
    title = "Not found"
    type_slug = "not-found"


class Conflict(DomainError):
    status = 409
    title = "Conflict"
    type_slug = "conflict"


class SubjectErased(DomainError):
    """The subject's data key was destroyed: their personal data no longer exists."""

    status = 410
    title = "Subject erased"
    type_slug = "subject-erased"


class PolicyDenied(DomainError):
    """The consent/purpose engine refused the disclosure (the refusal is in the ledger)."""

    status = 403
    title = "Denied by policy"
    type_slug = "policy-denied"


class IntegrityFailure(DomainError):
    """A ciphertext failed authentication: it was altered or moved; the read is refused."""

    status = 500
    title = "Stored data failed its integrity check"
    type_slug = "integrity-failure"


class KeyConfigurationError(RuntimeError):
    """Key material is missing or unusable."""
