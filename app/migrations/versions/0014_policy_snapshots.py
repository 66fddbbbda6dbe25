"""policy snapshots: every policy version that was in force, and from when

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-26

``policy_snapshot`` keeps each version's files (no personal data); ``policy_activation``
says from when a version was in force, so ``GET /v1/decisions/explain?at=`` replays the
rules of that day.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from app.db import UtcDateTime

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "policy_snapshot",
        sa.Column("version", sa.String(length=16), nullable=False),
        sa.Column("files", sa.Text(), nullable=False),
        sa.Column("stored_at", UtcDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("version"),
    )
    op.create_table(
        "policy_activation",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("version", sa.String(length=16), nullable=False),
        sa.Column("active_from", UtcDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_policy_activation_version", "policy_activation", ["version"])
    op.create_index("ix_policy_activation_active_from", "policy_activation", ["active_from"])


def downgrade() -> None:
    op.drop_table("policy_activation")
    op.drop_table("policy_snapshot")
