"""Identifiers linked to profiles, stored only as keyed blind indexes."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index
from sqlmodel import Field, SQLModel

from app.db import UtcDateTime


class Identifier(SQLModel, table=True):
    """``kind`` is the identifier type (email, phone, user_id, external:crm_id…); ``digest`` its blind index."""

    __tablename__ = "identifier"
    __table_args__ = (Index("ix_identifier_lookup", "kind", "digest"),)

    profile_id: str = Field(primary_key=True, max_length=36)
    kind: str = Field(primary_key=True, max_length=48)
    digest: str = Field(primary_key=True, max_length=64)
    first_seen: datetime = Field(sa_type=UtcDateTime)
    source: str | None = Field(default=None, max_length=128)
    key_version: int | None = None
    sealed: bytes | None = None
    """The identifier's value, encrypted under the subject's key (for access requests)."""


class ProfileMerge(SQLModel, table=True):
    """A record that ``merged_id`` was folded into ``profile_id`` and why."""

    __tablename__ = "profile_merge"

    id: str = Field(primary_key=True, max_length=36)
    profile_id: str = Field(index=True, max_length=36)
    merged_id: str = Field(index=True, max_length=36)
    via_kind: str = Field(max_length=48)
    rule: str = Field(max_length=200)
    source: str | None = Field(default=None, max_length=128)
    merged_at: datetime = Field(sa_type=UtcDateTime)


def identifier_aad_name(kind: str) -> str:
    """The associated-data name an identifier's sealed value is bound to."""
    return f"identifier:{kind}"
