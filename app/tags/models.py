"""Who carries which tag now, and when each tag was gained or lost (personal data)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index
from sqlmodel import Field, SQLModel

from app.db import UtcDateTime


class TagAssignment(SQLModel, table=True):
    """A tag given to a person by one source (``manual``, ``rule`` or ``threshold``).

    Keyed by the profile it was given to (``origin_id``), so a merge moves it to the survivor
    (``profile_id``) and an unmerge moves it back; a person carries a tag while any row holds it."""

    __tablename__ = "tag_assignment"
    __table_args__ = (
        Index("ix_tag_assignment_profile", "profile_id"),
        Index("ix_tag_assignment_tag", "tag", "profile_id"),
    )

    tag: str = Field(primary_key=True, max_length=96)
    origin_id: str = Field(primary_key=True, max_length=36)
    source: str = Field(primary_key=True, max_length=16)
    profile_id: str = Field(max_length=36)
    assigned_at: datetime = Field(sa_type=UtcDateTime)


class TagHistory(SQLModel, table=True):
    """When a person gained or lost a tag, and through which source (moves with merges)."""

    __tablename__ = "tag_history"
    __table_args__ = (Index("ix_tag_history_profile", "profile_id"),)

    tag: str = Field(primary_key=True, max_length=96)
    origin_id: str = Field(primary_key=True, max_length=36)
    source: str = Field(primary_key=True, max_length=16)
    at: datetime = Field(primary_key=True, sa_type=UtcDateTime)
    change: str = Field(primary_key=True, max_length=8)
    """``gained`` or ``lost``."""
    profile_id: str = Field(max_length=36)
