"""the durable ingest inbox and its processor (issue 9)

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-26

``ingest_inbox`` holds each accepted request (``/v1/batch``, the single-event routes) as one
row: its messages sealed as one blob under the inbox key, who sent it, when and how many in
the clear. The processor deletes a row in the transaction that stores its events; a batch
that keeps failing is set aside with ``status = 'failed'`` and its reason.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import app.db

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

TIME = app.db.UtcDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "ingest_inbox",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("received_at", TIME, nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("source", sa.String(128), nullable=True),
        sa.Column("trust", sa.String(8), nullable=False),
        sa.Column("events", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=True),
        sa.Column("gpc", sa.Boolean(), nullable=False),
        sa.Column("key_version", sa.Integer(), nullable=False),
        sa.Column("sealed", sa.LargeBinary(), nullable=False),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.String(200), nullable=True),
    )
    op.create_index("ix_ingest_inbox_status", "ingest_inbox", ["status", "id"])


def downgrade() -> None:
    op.drop_index("ix_ingest_inbox_status", table_name="ingest_inbox")
    op.drop_table("ingest_inbox")
