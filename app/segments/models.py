"""Saved segments, their versions, current members, membership history and size over time."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Index
from sqlmodel import Field, SQLModel

from app.db import UtcDateTime


class Segment(SQLModel, table=True):
    """A saved segment: its current definition. Earlier ones are in ``segment_version``."""

    __tablename__ = "segment"

    id: str = Field(primary_key=True, max_length=36)
    name: str = Field(max_length=200)
    purpose: str = Field(max_length=128)
    """What the members are for: every count and member list is decided for this purpose."""
    tree: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    version: int = 1
    owner_key_id: str = Field(max_length=36)
    """The API key (a marketer's) that created the segment and may change it."""
    created_at: datetime = Field(sa_type=UtcDateTime)
    updated_at: datetime = Field(sa_type=UtcDateTime)
    refreshed_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    deleted_at: datetime | None = Field(default=None, sa_type=UtcDateTime)


class SegmentVersion(SQLModel, table=True):
    """Every definition a segment has had (the change itself is in the ledger)."""

    __tablename__ = "segment_version"

    segment_id: str = Field(primary_key=True, max_length=36)
    version: int = Field(primary_key=True)
    name: str = Field(max_length=200)
    purpose: str = Field(max_length=128)
    tree: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    changed_by: str = Field(max_length=36)
    changed_at: datetime = Field(sa_type=UtcDateTime)


class SegmentMember(SQLModel, table=True):
    """A surviving profile matching a segment's tree at its last refresh (personal data)."""

    __tablename__ = "segment_member"
    __table_args__ = (Index("ix_segment_member_profile", "profile_id"),)

    segment_id: str = Field(primary_key=True, max_length=36)
    profile_id: str = Field(primary_key=True, max_length=36)
    entered_at: datetime = Field(sa_type=UtcDateTime)


class SegmentHistory(SQLModel, table=True):
    """When a person entered or left a segment (personal data; moves with merges)."""

    __tablename__ = "segment_history"
    __table_args__ = (Index("ix_segment_history_profile", "profile_id"),)

    segment_id: str = Field(primary_key=True, max_length=36)
    origin_id: str = Field(primary_key=True, max_length=36)
    """The profile id the change was recorded for (never changes)."""
    at: datetime = Field(primary_key=True, sa_type=UtcDateTime)
    profile_id: str = Field(max_length=36)
    """The person the row belongs to now."""
    change: str = Field(max_length=8)
    """``entered`` or ``left``."""


class SegmentSize(SQLModel, table=True):
    """A segment's size at one refresh (no person in it): for charts."""

    __tablename__ = "segment_size"

    segment_id: str = Field(primary_key=True, max_length=36)
    at: datetime = Field(primary_key=True, sa_type=UtcDateTime)
    version: int
    members: int
    usable: int
    """Members who may be used for the segment's purpose (the decision engine's predicate)."""
    entered: int
    left: int


class SegmentCursor(SQLModel, table=True):
    """How far a consumer of the ingest outbox has read (no person in it).

    PostgreSQL commits ids out of order, so the cursor is a transaction-id horizon: every
    outbox row written by a transaction below ``horizon`` has been applied. A pass reads the
    rows at or above it in id order (``after_id`` between calls) and, once done, moves the
    horizon to ``pass_horizon``, the oldest transaction still running when the pass began.
    On SQLite (one writer, ids commit in order) only ``after_id`` is used."""

    __tablename__ = "segment_cursor"

    consumer: str = Field(primary_key=True, max_length=32)
    horizon: int = Field(default=0, sa_type=BigInteger)
    pass_horizon: int = Field(default=0, sa_type=BigInteger)
    after_id: int = Field(default=0, sa_type=BigInteger)
    applied: int = Field(default=0, sa_type=BigInteger)
    """Outbox rows applied so far (a row may be applied again: applying is idempotent)."""
    updated_at: datetime = Field(sa_type=UtcDateTime)
