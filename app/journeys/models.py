"""Journeys, their definition history, pending timers, sends and the event-scan cursor."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from app.db import UtcDateTime


class Journey(SQLModel, table=True):
    """A journey's current definition; earlier ones are in ``journey_version``."""

    __tablename__ = "journey"

    id: str = Field(primary_key=True, max_length=36)
    name: str = Field(max_length=200)
    kind: str = Field(max_length=32)
    """``welcome``, ``abandoned_cart``, ``birthday`` or ``reengagement``."""
    purpose: str = Field(max_length=128)
    """What the messages are for: consent is decided for it at every send."""
    destination_id: str = Field(max_length=36)
    definition: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    """Everything else as given (window, delay, caps, quiet hours, time zone, condition)."""
    active: bool = True
    version: int = 1
    owner_key_id: str = Field(max_length=36)
    owner_role: str = Field(max_length=16)
    """The key (and its role) sends are made as: the decision engine checks that role's purpose."""
    created_at: datetime = Field(sa_type=UtcDateTime)
    updated_at: datetime = Field(sa_type=UtcDateTime)
    deleted_at: datetime | None = Field(default=None, sa_type=UtcDateTime)


class JourneyVersion(SQLModel, table=True):
    """Every definition a journey has had (the change itself is in the ledger)."""

    __tablename__ = "journey_version"

    journey_id: str = Field(primary_key=True, max_length=36)
    version: int = Field(primary_key=True)
    name: str = Field(max_length=200)
    kind: str = Field(max_length=32)
    purpose: str = Field(max_length=128)
    destination_id: str = Field(max_length=36)
    definition: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    active: bool = True
    changed_by: str = Field(max_length=36)
    changed_at: datetime = Field(sa_type=UtcDateTime)


class JourneyTimer(SQLModel, table=True):
    """A message due to one person (personal data): fired by the ``journeys.fire`` job at
    ``due_at`` or shortly after. ``key`` names the occasion (``welcome``, ``cart``,
    ``birthday:2026-11-26``…), one pending timer per journey, origin and occasion."""

    __tablename__ = "journey_timer"
    __table_args__ = (
        UniqueConstraint("journey_id", "origin_id", "key", name="uq_journey_timer_occasion"),
        Index("ix_journey_timer_due", "due_at"),
        Index("ix_journey_timer_profile", "profile_id"),
    )

    id: str = Field(primary_key=True, max_length=36)
    journey_id: str = Field(max_length=36)
    profile_id: str = Field(max_length=36)
    origin_id: str = Field(max_length=36)
    key: str = Field(max_length=64)
    due_at: datetime = Field(sa_type=UtcDateTime)
    anchor_at: datetime = Field(sa_type=UtcDateTime)
    """When the occasion began (the cart's last ``Product Added``, the last activity)."""
    created_at: datetime = Field(sa_type=UtcDateTime)


class JourneySend(SQLModel, table=True):
    """What became of one due timer (personal data): ``sent``, ``failed``, ``refused``
    (consent, with the reason), ``capped``, ``condition``. Sent rows count for the caps."""

    __tablename__ = "journey_send"
    __table_args__ = (
        Index("ix_journey_send_profile", "profile_id", "at"),
        Index("ix_journey_send_journey", "journey_id", "at"),
    )

    id: str = Field(primary_key=True, max_length=36)
    journey_id: str = Field(max_length=36)
    profile_id: str = Field(max_length=36)
    origin_id: str = Field(max_length=36)
    key: str = Field(max_length=64)
    due_at: datetime = Field(sa_type=UtcDateTime)
    at: datetime = Field(sa_type=UtcDateTime)
    destination_id: str = Field(max_length=36)
    outcome: str = Field(max_length=16)
    reason: str | None = Field(default=None, max_length=128)


class JourneyCursor(SQLModel, table=True):
    """How far the event scan (or a planner) has read: no person in it."""

    __tablename__ = "journey_cursor"

    name: str = Field(primary_key=True, max_length=64)
    at: datetime = Field(sa_type=UtcDateTime)
