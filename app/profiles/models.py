"""Profile rows: non-personal traits in JSON, personal fields as AEAD ciphertext."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, text
from sqlmodel import Field, SQLModel

from app.db import UtcDateTime


class Profile(SQLModel, table=True):
    __tablename__ = "profile"
    __table_args__ = (
        Index(  # the profiles merged into a person (person_of, erasure, export): few rows, no scan
            "ix_profile_merged_into",
            "merged_into",
            sqlite_where=text("merged_into IS NOT NULL"),
            postgresql_where=text("merged_into IS NOT NULL"),
        ),
    )

    id: str = Field(primary_key=True, max_length=36)
    created_at: datetime = Field(sa_type=UtcDateTime)
    updated_at: datetime = Field(sa_type=UtcDateTime)
    traits: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    """Traits that policy does not class as personal data (plan, tier, counts)."""
    trait_sources: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    """For each plain trait: ``{"source": …, "at": ISO time}`` of the value kept."""
    region: str | None = Field(default=None, max_length=8, index=True)
    """Coarse, non-personal region (ISO 3166 country, or subdivision such as US-CA) that picks
    the person's privacy regime; from an explicit region/country trait or the phone's country."""
    merged_into: str | None = Field(default=None, max_length=36)
    """Set when this profile was merged into another; its data then lives there."""


class ProfileField(SQLModel, table=True):
    """One personal-data trait of one profile, encrypted under the subject's data key."""

    __tablename__ = "profile_field"

    origin_id: str = Field(primary_key=True, max_length=36)
    """The profile the value was observed for (its key seals it); survives merges."""
    name: str = Field(primary_key=True, max_length=64)
    profile_id: str = Field(index=True, max_length=36)
    """The person the value belongs to now."""
    category: str = Field(max_length=64)
    key_version: int
    ciphertext: bytes
    updated_at: datetime = Field(sa_type=UtcDateTime)
    source: str | None = Field(default=None, max_length=128)
    trust: str = Field(default="server", max_length=8)
    observed_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    """When the source observed the value (event timestamp); decides trait precedence."""
    birth_year_index: str | None = Field(default=None, max_length=32)
    """Birthday rows only: keyed blind index of the birth year (age segments without decrypting)."""
    birth_md_index: str | None = Field(default=None, max_length=32)
    """Birthday rows only: keyed blind index of the month and day (``MM-DD``)."""
