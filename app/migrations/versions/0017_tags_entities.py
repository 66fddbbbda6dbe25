"""tags and entities: tag assignments and their history; accounts, products and who relates to them

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-26

``tag_assignment`` (who carries which tag, per source: manual, rule, threshold) and
``tag_history`` (gained, lost, when) are personal data keyed by the profile they were
written for, so merges move them and unmerges move them back. ``account`` (known by a keyed
hash of its group id, non-personal traits only) and ``product`` (catalogue attributes) name
nobody; ``account_member`` and ``event_product`` are personal data.
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

import app.db

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

S = sqlmodel.sql.sqltypes.AutoString
TIME = app.db.UtcDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "tag_assignment",
        sa.Column("tag", S(length=96), nullable=False),
        sa.Column("origin_id", S(length=36), nullable=False),
        sa.Column("source", S(length=16), nullable=False),
        sa.Column("profile_id", S(length=36), nullable=False),
        sa.Column("assigned_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("tag", "origin_id", "source"),
    )
    op.create_index("ix_tag_assignment_profile", "tag_assignment", ["profile_id"])
    op.create_index("ix_tag_assignment_tag", "tag_assignment", ["tag", "profile_id"])
    op.create_table(
        "tag_history",
        sa.Column("tag", S(length=96), nullable=False),
        sa.Column("origin_id", S(length=36), nullable=False),
        sa.Column("source", S(length=16), nullable=False),
        sa.Column("at", TIME, nullable=False),
        sa.Column("change", S(length=8), nullable=False),
        sa.Column("profile_id", S(length=36), nullable=False),
        sa.PrimaryKeyConstraint("tag", "origin_id", "source", "at", "change"),
    )
    op.create_index("ix_tag_history_profile", "tag_history", ["profile_id"])
    op.create_table(
        "account",
        sa.Column("id", S(length=32), nullable=False),
        sa.Column("traits", sa.JSON(), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "account_member",
        sa.Column("account_id", S(length=32), nullable=False),
        sa.Column("origin_id", S(length=36), nullable=False),
        sa.Column("profile_id", S(length=36), nullable=False),
        sa.Column("joined_at", TIME, nullable=False),
        sa.Column("seen_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("account_id", "origin_id"),
    )
    op.create_index("ix_account_member_profile", "account_member", ["profile_id"])
    op.create_table(
        "product",
        sa.Column("id", S(length=200), nullable=False),
        sa.Column("attributes", sa.JSON(), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "event_product",
        sa.Column("event_id", S(length=36), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("product_id", S(length=200), nullable=False),
        sa.Column("profile_id", S(length=36), nullable=False),
        sa.Column("origin_id", S(length=36), nullable=False),
        sa.Column("occurred_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("event_id", "position"),
    )
    op.create_index("ix_event_product_profile", "event_product", ["profile_id", "product_id"])


def downgrade() -> None:
    op.drop_index("ix_event_product_profile", table_name="event_product")
    op.drop_table("event_product")
    op.drop_table("product")
    op.drop_index("ix_account_member_profile", table_name="account_member")
    op.drop_table("account_member")
    op.drop_table("account")
    op.drop_index("ix_tag_history_profile", table_name="tag_history")
    op.drop_table("tag_history")
    op.drop_index("ix_tag_assignment_tag", table_name="tag_assignment")
    op.drop_index("ix_tag_assignment_profile", table_name="tag_assignment")
    op.drop_table("tag_assignment")
