"""Stored API keys: only a SHA-256 of the secret is kept."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from app.db import UtcDateTime

ROLES = ("admin", "ingest", "marketer", "compliance", "auditor")
TRUST_LEVELS = ("client", "server")


class ApiKey(SQLModel, table=True):
    __tablename__ = "api_key"

    id: str = Field(primary_key=True, max_length=24)
    name: str = Field(max_length=128)
    role: str = Field(max_length=16, index=True)
    source: str | None = Field(default=None, max_length=128)
    trust: str = Field(default="client", max_length=8)
    """For ingest keys: ``client`` (a public write key: browser, app) or ``server`` (a secret backend key)."""
    secret_hash: str = Field(max_length=64)
    created_at: datetime = Field(sa_type=UtcDateTime)
    revoked_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
