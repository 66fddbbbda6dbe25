"""journeys: definitions and their versions, pending timers, sends, the event-scan cursor

Revision ID: 0020
Revises: 0019
Create Date: 2026-11-26

A journey (``journey``) keeps its current definition and every earlier one
(``journey_version``). A message due to a person is a ``journey_timer`` (one per journey,
origin profile and occasion); what became of it is a ``journey_send``. Both are personal
data, in the journeys holder. ``journey_cursor`` is how far the event scan has read.
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

import app.db

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

S = sqlmodel.sql.sqltypes.AutoString
TIME = app.db.UtcDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "journey",
        sa.Column("id", S(length=36), nullable=False),
        sa.Column("name", S(length=200), nullable=False),
        sa.Column("kind", S(length=32), nullable=False),
        sa.Column("purpose", S(length=128), nullable=False),
        sa.Column("destination_id", S(length=36), nullable=False),
        sa.Column("definition", sa.JSON(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("owner_key_id", S(length=36), nullable=False),
        sa.Column("owner_role", S(length=16), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
        sa.Column("deleted_at", TIME, nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "journey_version",
        sa.Column("journey_id", S(length=36), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("name", S(length=200), nullable=False),
        sa.Column("kind", S(length=32), nullable=False),
        sa.Column("purpose", S(length=128), nullable=False),
        sa.Column("destination_id", S(length=36), nullable=False),
        sa.Column("definition", sa.JSON(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("changed_by", S(length=36), nullable=False),
        sa.Column("changed_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("journey_id", "version"),
    )
    op.create_table(
        "journey_timer",
        sa.Column("id", S(length=36), nullable=False),
        sa.Column("journey_id", S(length=36), nullable=False),
        sa.Column("profile_id", S(length=36), nullable=False),
        sa.Column("origin_id", S(length=36), nullable=False),
        sa.Column("key", S(length=64), nullable=False),
        sa.Column("due_at", TIME, nullable=False),
        sa.Column("anchor_at", TIME, nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("journey_id", "origin_id", "key", name="uq_journey_timer_occasion"),
    )
    op.create_index("ix_journey_timer_due", "journey_timer", ["due_at"])
    op.create_index("ix_journey_timer_profile", "journey_timer", ["profile_id"])
    op.create_table(
        "journey_send",
        sa.Column("id", S(length=36), nullable=False),
        sa.Column("journey_id", S(length=36), nullable=False),
        sa.Column("profile_id", S(length=36), nullable=False),
        sa.Column("origin_id", S(length=36), nullable=False),
        sa.Column("key", S(length=64), nullable=False),
        sa.Column("due_at", TIME, nullable=False),
        sa.Column("at", TIME, nullable=False),
        sa.Column("destination_id", S(length=36), nullable=False),
        sa.Column("outcome", S(length=16), nullable=False),
        sa.Column("reason", S(length=128), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_journey_send_profile", "journey_send", ["profile_id", "at"])
    op.create_index("ix_journey_send_journey", "journey_send", ["journey_id", "at"])
    op.create_table(
        "journey_cursor",
        sa.Column("name", S(length=64), nullable=False),
        sa.Column("at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("journey_cursor")
    op.drop_index("ix_journey_send_journey", table_name="journey_send")
    op.drop_index("ix_journey_send_profile", table_name="journey_send")
    op.drop_table("journey_send")
    op.drop_index("ix_journey_timer_profile", table_name="journey_timer")
    op.drop_index("ix_journey_timer_due", table_name="journey_timer")
    op.drop_table("journey_timer")
    op.drop_table("journey_version")
    op.drop_table("journey")
