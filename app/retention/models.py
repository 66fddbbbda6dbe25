"""The erasure queue (inactive profiles waiting for erasure) and the last activity retention
has removed (so the inactivity check still knows of it once the rows are gone)."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from app.db import UtcDateTime


class ErasureQueue(SQLModel, table=True):
    """A profile queued for erasure; queued once (the profile id is the key)."""

    __tablename__ = "erasure_queue"

    profile_id: str = Field(primary_key=True, max_length=36)
    queued_at: datetime = Field(sa_type=UtcDateTime)
    reason: str = Field(max_length=64)
    """``inactive``: no activity for ``inactive_profile_days``."""


class ExpiredActivity(SQLModel, table=True):
    """The newest activity of a person among rows retention removed (events, texts)."""

    __tablename__ = "retention_last_seen"

    profile_id: str = Field(primary_key=True, max_length=36)
    last_seen_at: datetime = Field(sa_type=UtcDateTime)
