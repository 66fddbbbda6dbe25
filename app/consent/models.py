"""Consent records (append-only history), the current state per person and purpose, privacy
flags, and opt-out signals tied to a device rather than a person (GPC)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from app.db import UtcDateTime

STATES = ("granted", "denied", "withdrawn")
METHODS = ("form", "banner", "api", "import", "gpc", "tcf", "gpp", "guardian", "event")
FLAGS = ("restricted", "suppressed", "profiling_refused", "minor_under_14", "minor_under_16", "gpc")


class ConsentRecord(SQLModel, table=True):
    """One choice a person made (or a signal that stands for one), never changed afterwards."""

    __tablename__ = "consent_record"
    __table_args__ = (
        UniqueConstraint("source", "client_id", name="uq_consent_record_client"),
        Index("ix_consent_record_profile", "profile_id", "purpose"),
    )

    id: str = Field(primary_key=True, max_length=36)
    profile_id: str = Field(max_length=36)
    origin_id: str = Field(max_length=36)
    purpose: str = Field(max_length=128)
    state: str = Field(max_length=16)
    legal_basis: str | None = Field(default=None, max_length=32)
    jurisdiction: str | None = Field(default=None, max_length=16)
    method: str = Field(max_length=16)
    source: str = Field(max_length=128)
    notice_version: str | None = Field(default=None, max_length=64)
    decided_at: datetime = Field(sa_type=UtcDateTime)
    """When the person made the choice (the event's skew-corrected time)."""
    received_at: datetime = Field(sa_type=UtcDateTime)
    expires_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    client_id: str | None = Field(default=None, max_length=128)
    """The sender's id for the record: sending it again stores nothing twice."""
    applied: bool = True
    """False when a newer choice already stood (a delayed grant): kept in history only."""


class ConsentState(SQLModel, table=True):
    """The current choice per profile of origin and purpose; a person's state is the most
    restrictive over their origins (so a merge keeps every choice and an unmerge restores them)."""

    __tablename__ = "consent_state"
    __table_args__ = (Index("ix_consent_state_decision", "profile_id", "purpose", "state"),)

    origin_id: str = Field(primary_key=True, max_length=36)
    purpose: str = Field(primary_key=True, max_length=128)
    profile_id: str = Field(index=True, max_length=36)
    state: str = Field(max_length=16)
    method: str = Field(max_length=16)
    decided_at: datetime = Field(sa_type=UtcDateTime)
    received_at: datetime = Field(sa_type=UtcDateTime)
    expires_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    record_id: str = Field(max_length=36)


class PrivacyFlag(SQLModel, table=True):
    """A standing condition on a person: restricted, suppressed, profiling refused, minor, GPC."""

    __tablename__ = "privacy_flag"
    __table_args__ = (Index("ix_privacy_flag_decision", "profile_id", "flag"),)

    origin_id: str = Field(primary_key=True, max_length=36)
    flag: str = Field(primary_key=True, max_length=32)
    profile_id: str = Field(index=True, max_length=36)
    set_at: datetime = Field(sa_type=UtcDateTime)
    source: str = Field(max_length=128)
    until: datetime | None = Field(default=None, sa_type=UtcDateTime)
    """When the flag lapses by itself (a minor's 14th or 16th birthday); None: it stands."""


class PolicySnapshot(SQLModel, table=True):
    """The policy files of one version, as they were."""

    __tablename__ = "policy_snapshot"

    version: str = Field(primary_key=True, max_length=16)
    files: str = Field(sa_type=Text)
    """JSON: file name → text."""
    stored_at: datetime = Field(sa_type=UtcDateTime)


class PolicyActivation(SQLModel, table=True):
    """A policy version coming into force (a service started with it)."""

    __tablename__ = "policy_activation"

    id: int | None = Field(default=None, primary_key=True)
    version: str = Field(max_length=16, index=True)
    active_from: datetime = Field(sa_type=UtcDateTime, index=True)
