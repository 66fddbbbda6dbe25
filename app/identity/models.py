"""Identifiers linked to profiles, stored only as keyed blind indexes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, text
from sqlmodel import Field, SQLModel

from app.db import UtcDateTime


class Identifier(SQLModel, table=True):
    """``kind`` is the identifier type (email, phone, user_id, external:crm_id…); ``digest`` its blind index.

    ``origin_id`` is the profile the identifier was linked to (its value is sealed under
    that profile's key); ``profile_id`` the person it belongs to now (merges move it).
    """

    __tablename__ = "identifier"
    __table_args__ = (
        Index("ix_identifier_lookup", "kind", "digest"),
        Index("ix_identifier_profile", "profile_id"),
        Index(
            "ix_identifier_gpc",
            "profile_id",
            "gpc_at",
            sqlite_where=text("gpc_at IS NOT NULL"),
            postgresql_where=text("gpc_at IS NOT NULL"),
        ),
    )

    origin_id: str = Field(primary_key=True, max_length=36)
    kind: str = Field(primary_key=True, max_length=48)
    digest: str = Field(primary_key=True, max_length=64)
    profile_id: str = Field(max_length=36)
    first_seen: datetime = Field(sa_type=UtcDateTime)
    source: str | None = Field(default=None, max_length=128)
    trust: str = Field(default="server", max_length=8)
    """``server`` (a secret key or verified user) or ``client`` (a public write key) linked it."""
    key_version: int | None = None
    sealed: bytes | None = None
    """The identifier's value, encrypted under the origin profile's key (for access requests)."""
    gpc_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    """When a Global Privacy Control signal came from this device or browser id: it opts out
    whichever profile holds the id, now or after later links and merges."""


class IdentityClaim(SQLModel, table=True):
    """An identifier a ``client`` source claimed for a person but that already belongs to
    someone else: kept sealed for review, never used to link or merge."""

    __tablename__ = "identity_claim"

    id: str = Field(primary_key=True, max_length=36)
    profile_id: str = Field(index=True, max_length=36)
    origin_id: str = Field(max_length=36)
    kind: str = Field(max_length=48)
    digest: str = Field(max_length=64)
    source: str | None = Field(default=None, max_length=128)
    rule: str = Field(max_length=64)
    claimed_at: datetime = Field(sa_type=UtcDateTime)
    key_version: int
    sealed: bytes


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
    displaced: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    """Plain traits of the survivor that the merged profile's values replaced (restored by an unmerge)."""
    unmerged_at: datetime | None = Field(default=None, sa_type=UtcDateTime)


def identifier_aad_name(kind: str) -> str:
    """The associated-data name an identifier's sealed value is bound to."""
    return f"identifier:{kind}"


class SuppressedIdentifier(SQLModel, table=True):
    """An identifier of an erased person that ingestion refuses from now on.

    ``digest`` is a keyed hash under the suppression key (a key of its own, wrapped under the
    master keyring: ``master_version`` 0; entries of before it have the master version their
    key was derived from), never the blind-index key, so an entry cannot be joined to any
    identifier, event or profile left in the database and names nobody."""

    __tablename__ = "suppressed_identifier"

    digest: str = Field(primary_key=True, max_length=64)
    kind: str = Field(max_length=48)
    master_version: int
    suppressed_at: datetime = Field(sa_type=UtcDateTime)
    request_id: str | None = Field(default=None, max_length=64)
    """The data-subject request whose erasure added it."""
    refused: int = 0
    """How many messages carrying it ingestion has refused since."""
    last_refused_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
