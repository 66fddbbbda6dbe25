"""Redacted texts and the vault of the values taken out of them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, Text
from sqlmodel import Field, SQLModel

from app.db import UtcDateTime


class TextRecord(SQLModel, table=True):
    """A text as stored: personal data replaced by typed placeholders (``<EMAIL_ADDRESS_1>``)."""

    __tablename__ = "text_record"
    __table_args__ = (Index("ix_text_profile_time", "profile_id", "occurred_at"),)

    id: str = Field(primary_key=True, max_length=36)
    profile_id: str = Field(max_length=36)
    origin_id: str = Field(max_length=36)
    """The author's profile when the text was stored; its key seals the vault entries."""
    source: str = Field(max_length=128)
    channel: str = Field(max_length=32)
    language: str = Field(max_length=8)
    redacted: str = Field(sa_type=Text)
    entity_counts: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    occurred_at: datetime = Field(sa_type=UtcDateTime)
    received_at: datetime = Field(sa_type=UtcDateTime)


class TextVaultEntry(SQLModel, table=True):
    """One value taken out of a text, encrypted under the author's key (found and shredded by person)."""

    __tablename__ = "text_vault"

    text_id: str = Field(primary_key=True, max_length=36)
    placeholder: str = Field(primary_key=True, max_length=48)
    profile_id: str = Field(index=True, max_length=36)
    origin_id: str = Field(max_length=36)
    entity_type: str = Field(max_length=32)
    key_version: int
    sealed: bytes


def vault_field(text_id: str, placeholder: str) -> str:
    """The associated-data name of one vaulted value."""
    return f"text:{text_id}:{placeholder}"
