"""Per-subject data keys, stored only wrapped under a master key."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from app.db import UtcDateTime


class SubjectKey(SQLModel, table=True):
    """One person's data-encryption key. Deleting the row crypto-shreds their data."""

    __tablename__ = "subject_key"

    profile_id: str = Field(primary_key=True, max_length=36)
    key_version: int = 1
    master_version: int = Field(index=True)
    wrapped_key: bytes
    created_at: datetime = Field(sa_type=UtcDateTime)


class WrappedSecret(SQLModel, table=True):
    """A key of the service's own (no person's), stored only wrapped under a master key and
    re-wrapped by rotation with the data keys, so retiring a master version never loses it
    (the suppression list's key)."""

    __tablename__ = "wrapped_secret"

    name: str = Field(primary_key=True, max_length=64)
    master_version: int
    wrapped_key: bytes
    created_at: datetime = Field(sa_type=UtcDateTime)
