"""Request and response bodies of the data-subject request API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec


class DsrIntakeIn(msgspec.Struct, forbid_unknown_fields=True):
    """A request from the public form, or entered by staff (mail, phone)."""

    kind: str
    """access, portability, erasure, rectification, restriction, objection, opt_out, consent_withdrawal."""
    regulation: str
    """GDPR, CCPA (CPRA) or PIPL."""
    identifiers: dict[str, Any]
    """What the requester gives: ``email``, ``phone``, ``user_id``, ``external:crm_id``…; an
    email or phone is needed to reach them."""
    jurisdiction: str | None = None
    scope: str | None = None
    """``categories`` or ``specific`` (access), ``profiling`` or ``direct_marketing`` (objection)…"""
    field: str | None = None
    """Rectification: the field to correct."""
    details: dict[str, Any] | None = None
    """The requester's own words (the correct value, the grounds): sealed."""
    verify: bool = True
    """Staff only: false when identity was checked another way (then ``verification_note``)."""
    verification_note: str | None = None


class DsrReceipt(msgspec.Struct):
    """What the public form answers: the same whether or not we hold data about the person."""

    id: str
    status: str
    received_at: datetime
    due_at: datetime
    message: str


class CodeIn(msgspec.Struct, forbid_unknown_fields=True):
    code: str


class StatusIn(msgspec.Struct, forbid_unknown_fields=True):
    status: str
    """in_progress, completed or denied."""
    reason: str | None = None


class ReasonIn(msgspec.Struct, forbid_unknown_fields=True):
    reason: str | None = None


class BulkIn(msgspec.Struct, forbid_unknown_fields=True):
    """One action on every request the filter matches (at most ``limit``)."""

    action: str
    """in_progress, completed, denied, wait, resume or retry (failed steps)."""
    status: str | None = None
    due_before: datetime | None = None
    kind: str | None = None
    regulation: str | None = None
    flag: str | None = None
    reason: str | None = None
    limit: int = 100


class BulkResult(msgspec.Struct):
    id: str
    ok: bool
    status: str
    problem: str | None = None


class DsrOut(msgspec.Struct):
    """A request as compliance sees it: state and every deadline."""

    id: str
    kind: str
    regulation: str
    channel: str
    status: str
    received_at: datetime
    due_at: datetime
    days_left: int
    """Whole days to the deadline (negative: overdue); frozen while waiting."""
    jurisdiction: str | None = None
    scope: str | None = None
    field: str | None = None
    ack_due_at: datetime | None = None
    extension_latest_at: datetime | None = None
    extended_at: datetime | None = None
    extension_reason: str | None = None
    waiting_since: datetime | None = None
    waited_seconds: int = 0
    verified_at: datetime | None = None
    closed_at: datetime | None = None
    denial_reason: str | None = None
    flag: str | None = None
    subject_id: str | None = None
    identifiers: dict[str, Any] | None = None
    details: dict[str, Any] | None = None
    verifications: list[dict[str, Any]] = []
    steps: list[dict[str, Any]] = []
    history: list[dict[str, Any]] = []


class OutboxMessage(msgspec.Struct):
    topic: str
    created_at: datetime
    body: dict[str, Any]
