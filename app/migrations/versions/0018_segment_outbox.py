"""segment outbox: people whose data changed, for the incremental segment membership

Revision ID: 0018
Revises: 0017
Create Date: 2026-11-26

``ingest_outbox`` (ingestion writes it) gets one row per person an ingest transaction,
a merge, an unmerge or a consent change touched, in that same transaction, with the
writing transaction's id on PostgreSQL. ``segment_cursor`` (segments writes it) is how far
the segments' consumer has applied the outbox.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import app.db

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

TIME = app.db.UtcDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "ingest_outbox",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("profile_id", sa.String(36), nullable=False),
        sa.Column("xid", sa.BigInteger(), nullable=True),
        sa.Column("reason", sa.String(16), nullable=False),
        sa.Column("at", TIME, nullable=False),
    )
    op.create_index("ix_ingest_outbox_xid", "ingest_outbox", ["xid", "id"])
    op.create_table(
        "segment_cursor",
        sa.Column("consumer", sa.String(32), nullable=False),
        sa.Column("horizon", sa.BigInteger(), nullable=False),
        sa.Column("pass_horizon", sa.BigInteger(), nullable=False),
        sa.Column("after_id", sa.BigInteger(), nullable=False),
        sa.Column("applied", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("consumer"),
    )


def downgrade() -> None:
    op.drop_table("segment_cursor")
    op.drop_index("ix_ingest_outbox_xid", table_name="ingest_outbox")
    op.drop_table("ingest_outbox")
