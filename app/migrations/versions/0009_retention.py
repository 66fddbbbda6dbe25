"""retention: the erasure queue and the last activity retention removed

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-27

The daily retention job queues profiles with no activity for ``inactive_profile_days`` in
``erasure_queue`` (once per profile). Before it deletes expired events and texts it keeps
each person's newest removed activity time in ``retention_last_seen``, so a person whose
old events expired is not later taken for inactive too early.
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

import app.db

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

S = sqlmodel.sql.sqltypes.AutoString
TIME = app.db.UtcDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "erasure_queue",
        sa.Column("profile_id", S(length=36), nullable=False),
        sa.Column("queued_at", TIME, nullable=False),
        sa.Column("reason", S(length=64), nullable=False),
        sa.PrimaryKeyConstraint("profile_id"),
    )
    op.create_table(
        "retention_last_seen",
        sa.Column("profile_id", S(length=36), nullable=False),
        sa.Column("last_seen_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("profile_id"),
    )


def downgrade() -> None:
    op.drop_table("retention_last_seen")
    op.drop_table("erasure_queue")
