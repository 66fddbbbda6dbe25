"""Stored events, the de-duplication register and consent signals that arrived with events."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Index, Integer, cast, column
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

from app.db import UtcDateTime


class Event(SQLModel, table=True):
    """One event in a person's timeline. Personal parts (context, ids, personal properties
    and traits) are sealed under the subject's key; the rest stays queryable."""

    __tablename__ = "event"
    __table_args__ = (
        Index("ix_event_profile_time", "profile_id", "occurred_at"),
        Index("ix_event_name_time", "name", "occurred_at"),  # segments' event conditions, traits refresh (0025)
        Index("ix_event_received", "received_at", "id"),  # journeys read events by time of receipt (0024)
        Index(  # PostgreSQL only (migration 0023): segment conditions on properties (``json_contains``)
            "ix_event_properties",
            cast(column("properties"), JSONB).label("properties_jsonb"),
            postgresql_using="gin",
            postgresql_ops={"properties_jsonb": "jsonb_path_ops"},
        ),
    )

    id: str = Field(primary_key=True, max_length=36)
    profile_id: str = Field(max_length=36)
    origin_id: str = Field(max_length=36)
    """The profile the event was stored for; its key seals ``sealed``."""
    source: str = Field(max_length=128)
    message_id: str = Field(max_length=128)
    type: str = Field(max_length=16)
    name: str | None = Field(default=None, max_length=200)
    occurred_at: datetime = Field(sa_type=UtcDateTime)
    received_at: datetime = Field(sa_type=UtcDateTime)
    properties: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    traits: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    key_version: int
    sealed: bytes


class IngestedMessage(SQLModel, table=True):
    """(source, messageId) pairs already stored: replays store nothing twice."""

    __tablename__ = "ingested_message"

    source: str = Field(primary_key=True, max_length=128)
    message_id: str = Field(primary_key=True, max_length=128)
    received_at: datetime = Field(sa_type=UtcDateTime)


class ConsentSignal(SQLModel, table=True):
    """A consent signal as received (``Sec-GPC``, ``context.consent``), kept for the consent engine."""

    __tablename__ = "consent_signal"

    id: str = Field(primary_key=True, max_length=36)
    profile_id: str = Field(index=True, max_length=36)
    origin_id: str = Field(max_length=36)
    source: str = Field(max_length=128)
    kind: str = Field(max_length=32)
    """``gpc`` (Global Privacy Control header), ``segment.consent`` or ``rudderstack.consent``."""
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    message_id: str | None = Field(default=None, max_length=128)
    received_at: datetime = Field(sa_type=UtcDateTime)


ID_TYPE = BigInteger().with_variant(Integer(), "sqlite")


class InboxBatch(SQLModel, table=True):
    """One accepted request waiting for the processor: its messages sealed as one blob under
    the inbox key (``app.vault.blobs``); who sent it, when and how many in the clear.

    Rows are deleted in the transaction that stores their events; a batch that keeps failing
    is set aside (``status='failed'`` with the reason) after ``attempts`` tries."""

    __tablename__ = "ingest_inbox"
    __table_args__ = (Index("ix_ingest_inbox_status", "status", "id"),)

    id: int | None = Field(default=None, sa_column=Column(ID_TYPE, primary_key=True, autoincrement=True))
    received_at: datetime = Field(sa_type=UtcDateTime)
    key_id: str = Field(max_length=64)
    role: str = Field(max_length=16)
    name: str = Field(max_length=128)
    source: str | None = Field(default=None, max_length=128)
    trust: str = Field(default="server", max_length=8)
    events: int
    kind: str | None = Field(default=None, max_length=16)
    """The single-event route's type (``identify``…), or None for a batch or an import chunk."""
    gpc: bool = False
    key_version: int
    sealed: bytes
    status: str = Field(default="queued", max_length=8)
    attempts: int = 0
    error: str | None = Field(default=None, max_length=200)


class OutboxEntry(SQLModel, table=True):
    """A person whose data changed (events stored, merged, consent recorded), written in the
    transaction that changed it: consumers (the segments' incremental membership) read the
    rows after commit, so nothing is missed across a crash (``app.ingest.outbox``)."""

    __tablename__ = "ingest_outbox"
    __table_args__ = (Index("ix_ingest_outbox_xid", "xid", "id"),)

    id: int | None = Field(default=None, sa_column=Column(ID_TYPE, primary_key=True, autoincrement=True))
    profile_id: str = Field(max_length=36)
    xid: int | None = Field(default=None, sa_type=BigInteger)
    """PostgreSQL: the writing transaction's id (``pg_current_xact_id``), so a consumer can
    tell which rows may still appear below the ids it has read. None on SQLite."""
    reason: str = Field(max_length=16)
    """``event``, ``merge``, ``consent`` or ``unmerge``."""
    at: datetime = Field(sa_type=UtcDateTime)
