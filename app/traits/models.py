"""Computed trait values, one row per surviving person and trait."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index
from sqlmodel import Field, SQLModel

from app.db import UtcDateTime


class TraitValue(SQLModel, table=True):
    """A computed trait's value for a person (personal data: derived from their events).

    ``value`` is ``{"v": VALUE}`` so segment conditions read it with the same typed JSON
    comparisons as profile traits. Stored plain: see ``app/traits/service.py``."""

    __tablename__ = "trait_value"
    __table_args__ = (Index("ix_trait_value_name", "name", "profile_id"),)

    profile_id: str = Field(primary_key=True, max_length=36)
    name: str = Field(primary_key=True, max_length=64)
    value: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    computed_at: datetime = Field(sa_type=UtcDateTime)


class TraitPair(SQLModel, table=True):
    """``bought_together``'s item-to-item table (no person in it): for each item, the items
    most often in the same order, with how many orders held both. Kept by the full refresh;
    refreshes of named people score from it."""

    __tablename__ = "trait_pair"

    trait: str = Field(primary_key=True, max_length=64)
    item: str = Field(primary_key=True, max_length=200)
    other: str = Field(primary_key=True, max_length=200)
    co: int


class TraitRefresh(SQLModel, table=True):
    """When the scheduled refresh last ran (no person in it): ``full`` (every trait for
    everyone) and ``due`` (only the people whose values time has changed since)."""

    __tablename__ = "trait_refresh"

    kind: str = Field(primary_key=True, max_length=16)
    at: datetime = Field(sa_type=UtcDateTime)
