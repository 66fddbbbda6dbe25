"""Accounts (households, companies) and products, and how people relate to them.

``account`` and ``product`` describe no person: an account is known by a keyed hash of its
group id and keeps only traits that policy classes non-personal; a product is catalogue
data. Who belongs to an account and who bought which product are personal data (keyed by
the profile, moved by merges, registered in the inventory)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index
from sqlmodel import Field, SQLModel

from app.db import UtcDateTime


class Account(SQLModel, table=True):
    """An account or household from Segment ``group`` calls."""

    __tablename__ = "account"

    id: str = Field(primary_key=True, max_length=32)
    """Keyed blind index of the group id (the id itself stays in the sealed event)."""
    traits: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    """Group traits that policy classes non-personal (plan, industry, employees…), latest kept."""
    created_at: datetime = Field(sa_type=UtcDateTime)
    updated_at: datetime = Field(sa_type=UtcDateTime)


class AccountMember(SQLModel, table=True):
    """A person belongs to an account (a group call named both)."""

    __tablename__ = "account_member"
    __table_args__ = (Index("ix_account_member_profile", "profile_id"),)

    account_id: str = Field(primary_key=True, max_length=32)
    origin_id: str = Field(primary_key=True, max_length=36)
    profile_id: str = Field(max_length=36)
    joined_at: datetime = Field(sa_type=UtcDateTime)
    seen_at: datetime = Field(sa_type=UtcDateTime)


class Product(SQLModel, table=True):
    """A product seen in e-commerce events (``product_id`` and its attributes)."""

    __tablename__ = "product"

    id: str = Field(primary_key=True, max_length=200)
    attributes: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    """category, brand, price, name, sku, variant… (latest value of each kept)."""
    created_at: datetime = Field(sa_type=UtcDateTime)
    updated_at: datetime = Field(sa_type=UtcDateTime)


class EventProduct(SQLModel, table=True):
    """A product an event was about (one row per product of an order)."""

    __tablename__ = "event_product"
    __table_args__ = (Index("ix_event_product_profile", "profile_id", "product_id"),)

    event_id: str = Field(primary_key=True, max_length=36)
    position: int = Field(primary_key=True)
    product_id: str = Field(max_length=200)
    profile_id: str = Field(max_length=36)
    origin_id: str = Field(max_length=36)
    occurred_at: datetime = Field(sa_type=UtcDateTime)
