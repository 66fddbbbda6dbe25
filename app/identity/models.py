"""Identifiers linked to profiles, stored only as keyed blind indexes."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index
from sqlmodel import Field, SQLModel

from app.db import UtcDateTime


class Identifier(SQLModel, table=True):
    """``kind`` is the identifier type (email, phone, user_id…); ``digest`` its blind index."""

    __tablename__ = "identifier"
    __table_args__ = (Index("ix_identifier_lookup", "kind", "digest"),)

    profile_id: str = Field(primary_key=True, max_length=36)
    kind: str = Field(primary_key=True, max_length=32)
    digest: str = Field(primary_key=True, max_length=64)
    first_seen: datetime = Field(sa_type=UtcDateTime)
