"""segments and computed traits faster: events by time, and the scheduled traits refresh's marks

Revision ID: 0025
Revises: 0024
Create Date: 2026-11-26

``ix_event_name_time`` on event (name, occurred_at): the events of one name in a time range.
It answers the segments' "has such an event (within N days)" on SQLite (``person IN (the
matching events' people)``: the events of that name and window are read, instead of
probing every profile's events; PostgreSQL mostly finds them through the GIN index of 0023)
and, on both databases, the scheduled computed-traits refresh's question "whose events
reached a window's edge since the last run" (``app/traits/service.py`` ``due_people``).
Size: see README (segments benchmark).

``trait_refresh``: when the scheduled traits refresh last ran, full or incremental (no
person in it).
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

import app.db

revision = "0025"
down_revision = "0024"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_event_name_time", "event", ["name", "occurred_at"])
    op.create_table(
        "trait_refresh",
        sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("at", app.db.UtcDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("kind"),
    )


def downgrade() -> None:
    op.drop_table("trait_refresh")
    op.drop_index("ix_event_name_time", table_name="event")
