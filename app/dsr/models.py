"""Data-subject requests and what their handling keeps: verification codes, the demo outbox,
state history and one step per store.

A request is personal data too: the identifiers the requester gave are sealed under the
request's own data key (a ``subject_key`` row keyed by the request id), so erasing the
requester shreds that key and leaves only the minimal record the law asks to keep (type,
regulation, dates, outcome: GDPR Art. 5(2) accountability, CCPA regulations § 7101 records
kept for 24 months).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, Text
from sqlmodel import Field, SQLModel

from app.db import UtcDateTime

KINDS = (
    "access",
    "portability",
    "erasure",
    "rectification",
    "restriction",
    "objection",
    "opt_out",
    "consent_withdrawal",
)
REGULATIONS = ("gdpr", "ccpa", "pipl")
STATUSES = ("received", "waiting", "verified", "in_progress", "extended", "completed", "denied")
STEP_STATUSES = ("pending", "done", "failed")


class DsrRequest(SQLModel, table=True):
    """One data-subject request and its deadlines (computed at receipt, moved by waiting and extension)."""

    __tablename__ = "dsr_request"
    __table_args__ = (Index("ix_dsr_request_due", "status", "due_at"),)

    id: str = Field(primary_key=True, max_length=36)
    kind: str = Field(max_length=24)
    regulation: str = Field(max_length=8)
    jurisdiction: str | None = Field(default=None, max_length=16)
    """Where the calendar comes from (a country or subdivision code, e.g. DE, US-CA, CN)."""
    channel: str = Field(max_length=16)
    """``public`` (the web form) or ``staff`` (entered by a compliance officer: mail, phone)."""
    status: str = Field(max_length=16, index=True)
    received_at: datetime = Field(sa_type=UtcDateTime)
    due_at: datetime = Field(sa_type=UtcDateTime)
    ack_due_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    extension_latest_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    """The last moment an extension may be taken and the person told of it."""
    extended_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    extension_reason: str | None = Field(default=None, max_length=500)
    waiting_since: datetime | None = Field(default=None, sa_type=UtcDateTime)
    """Set while waiting for the requester: the clock is stopped."""
    waited_seconds: int = 0
    """Time spent waiting so far."""
    paused_days: int = 0
    """Calendar days the clock stood still (in the regulation's timezone), already in the deadlines."""
    paused_working_days: int = 0
    """The working days of the regulation's calendar among ``paused_days``."""
    held_status: str | None = Field(default=None, max_length=16)
    """The state a waiting request returns to when the requester answers."""
    verified_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    closed_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    denial_reason: str | None = Field(default=None, max_length=500)
    flag: str | None = Field(default=None, max_length=16)
    """``due_soon`` or ``overdue``, set by the deadline job."""
    subject_id: str | None = Field(default=None, max_length=36, index=True)
    """The person the request was verified for (the root profile), once verified."""
    scope: str | None = Field(default=None, max_length=32)
    """What within the kind: ``categories`` or ``specific`` access, objection ``to profiling``…"""
    field: str | None = Field(default=None, max_length=128)
    """The field a rectification corrects (so it is not used to verify)."""
    created_by: str | None = Field(default=None, max_length=64)
    key_version: int | None = None
    sealed: bytes | None = None
    """The identifiers and details the requester gave, sealed under the request's key;
    None once the requester was erased (the minimal record stays)."""


class DsrVerification(SQLModel, table=True):
    """A one-time code for one matching profile (each is verified on its own) or for the
    requester's contact when nothing matched (so both paths do the same work)."""

    __tablename__ = "dsr_verification"

    id: str = Field(primary_key=True, max_length=36)
    request_id: str = Field(max_length=36, index=True)
    profile_id: str | None = Field(default=None, max_length=36)
    code_hash: str = Field(max_length=64)
    expires_at: datetime = Field(sa_type=UtcDateTime)
    attempts: int = 0
    matched_points: int = 0
    """How many data points the requester gave that match this profile."""
    state: str = Field(default="pending", max_length=16)
    """pending, verified, expired or locked (too many attempts)."""
    verified_at: datetime | None = Field(default=None, sa_type=UtcDateTime)


class DsrOutbox(SQLModel, table=True):
    """The default delivery channel: messages to the requester, sealed under the request's
    key, read by compliance through ``GET /v1/dsr/{id}/outbox`` and purged after use."""

    __tablename__ = "dsr_outbox"

    id: str = Field(primary_key=True, max_length=36)
    request_id: str = Field(max_length=36, index=True)
    topic: str = Field(max_length=32)
    """``code``, ``acknowledgement``, ``extension_notice``, ``completion``…"""
    created_at: datetime = Field(sa_type=UtcDateTime)
    key_version: int
    sealed: bytes


class DsrTransition(SQLModel, table=True):
    """One change of a request's state, by whom and why."""

    __tablename__ = "dsr_transition"

    id: int | None = Field(default=None, primary_key=True)
    request_id: str = Field(max_length=36, index=True)
    from_status: str | None = Field(default=None, max_length=16)
    to_status: str = Field(max_length=16)
    at: datetime = Field(sa_type=UtcDateTime)
    actor: str | None = Field(default=None, max_length=64)
    reason: str | None = Field(default=None, sa_type=Text)


class DsrStep(SQLModel, table=True):
    """One store's part of fulfilling a request; a failed step is retried on its own."""

    __tablename__ = "dsr_step"

    request_id: str = Field(primary_key=True, max_length=36)
    store: str = Field(primary_key=True, max_length=64)
    status: str = Field(default="pending", max_length=16)
    error_class: str | None = Field(default=None, max_length=128)
    attempts: int = 0
    updated_at: datetime = Field(sa_type=UtcDateTime)
    counts: str | None = Field(default=None, sa_type=Text)
    """JSON: what the step found and did (rows per table)."""


# --- fulfilment ---


class DsrPackage(SQLModel, table=True):
    """An access package waiting to be downloaded: a zip in the export folder, reached by a
    token (only its SHA-256 is kept) until ``expires_at``, when a job deletes file and row.
    Names no person: the package's manifest says whose it is (erasure reads it)."""

    __tablename__ = "dsr_package"

    token_hash: str = Field(primary_key=True, max_length=64)
    request_id: str = Field(max_length=36, index=True)
    file_name: str = Field(max_length=128)
    sha256: str = Field(max_length=64)
    size: int
    created_at: datetime = Field(sa_type=UtcDateTime)
    expires_at: datetime = Field(sa_type=UtcDateTime, index=True)
    downloads: int = 0


class DsrCertificate(SQLModel, table=True):
    """A signed completion certificate of one request (what was found and done per store)."""

    __tablename__ = "dsr_certificate"

    request_id: str = Field(primary_key=True, max_length=36)
    issued_at: datetime = Field(sa_type=UtcDateTime)
    body: str = Field(sa_type=Text)
    """The signed JSON (canonical form), naming the request, never the person's identifiers."""
    key_id: str = Field(max_length=32)
    signature: str = Field(max_length=128)
