"""Import runs and their counters (no personal data)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Text
from sqlmodel import Field, SQLModel

from app.db import UtcDateTime


class ImportJob(SQLModel, table=True):
    __tablename__ = "import_job"

    id: str = Field(primary_key=True, max_length=36)
    source: str = Field(max_length=128)
    filename: str = Field(max_length=255)
    file_sha256: str = Field(max_length=64, index=True)
    status: str = Field(max_length=16)
    """``queued``, ``running``, ``done`` or ``failed``."""
    rows_read: int = 0
    profiles_created: int = 0
    profiles_updated: int = 0
    events_stored: int = 0
    duplicates: int = 0
    rows_rejected: int = 0
    rejects_csv: str | None = Field(default=None, sa_type=Text)
    """Rejected rows as CSV: line, field, reason (never the values)."""
    error: str | None = Field(default=None, max_length=1000)
    format: str = Field(default="csv", max_length=8)
    mapping: str | None = Field(default=None, sa_type=Text)
    """The YAML mapping sent with the upload (column names only)."""
    actor_key_id: str = Field(max_length=64)
    actor_trust: str = Field(default="client", max_length=8, sa_column_kwargs={"server_default": "client"})
    """Trust of the uploading key (``client`` or ``server``): the background run acts with it."""
    wrapped_key: bytes | None = None
    """The upload's file key, wrapped under the master key (the upload is stored encrypted)."""
    master_version: int | None = None
    created_at: datetime = Field(sa_type=UtcDateTime)
    heartbeat_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
