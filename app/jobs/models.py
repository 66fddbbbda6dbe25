"""One row per due run of a job: its primary key is the lease that makes runs exactly-once."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from app.db import UtcDateTime


class JobRun(SQLModel, table=True):
    __tablename__ = "job_run"

    job_id: str = Field(primary_key=True, max_length=64)
    slot: datetime = Field(primary_key=True, sa_type=UtcDateTime)
    """The due time this run is for; only one process can insert a given (job, slot)."""
    owner: str = Field(max_length=128)
    status: str = Field(max_length=16)
    started_at: datetime = Field(sa_type=UtcDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UtcDateTime)
    result: str | None = Field(default=None, max_length=1000)
