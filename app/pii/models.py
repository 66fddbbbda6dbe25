"""Field names seen without a policy decision, and reviewers' decisions about them.

Neither table holds personal data: names are kept by keyed hash, with the name itself
only when it does not look personal (``app.pii.fields.FieldPolicy.label``)."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from app.db import UtcDateTime


class FieldSighting(SQLModel, table=True):
    """One batch's sightings of a field name sealed as ``user.unknown`` (append-only, so
    concurrent batches never contend for a row; the review list sums them)."""

    __tablename__ = "field_sighting"

    id: str = Field(primary_key=True, max_length=36)
    key: str = Field(index=True, max_length=32)
    """Keyed hash of the normalised name (``app.pii.fields.name_key``)."""
    label: str = Field(max_length=64)
    """The name as seen, or ``h_<hash>`` when the name itself looks personal."""
    scope: str = Field(max_length=32)
    """Where: ``traits``, ``properties``, ``group_traits``."""
    seen: int
    at: datetime = Field(sa_type=UtcDateTime)


class FieldDecision(SQLModel, table=True):
    """A reviewer's decision for a field name: ``non_personal`` or a data category."""

    __tablename__ = "field_decision"

    key: str = Field(primary_key=True, max_length=32)
    label: str = Field(max_length=64)
    decision: str = Field(max_length=64)
    decided_by: str = Field(max_length=64)
    decided_at: datetime = Field(sa_type=UtcDateTime)
