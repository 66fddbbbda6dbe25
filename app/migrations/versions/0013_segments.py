"""segments: saved definitions and their versions, current members, membership history, sizes

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-26

A saved segment (``segment``) keeps its current condition tree and every earlier one
(``segment_version``). Its members at the last refresh are ``segment_member``; when a person
entered or left is ``segment_history`` (personal data, keyed by the profile it was recorded
for, so merges move it and unmerges move it back); ``segment_size`` is the size per refresh.
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

import app.db

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

S = sqlmodel.sql.sqltypes.AutoString
TIME = app.db.UtcDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "segment",
        sa.Column("id", S(length=36), nullable=False),
        sa.Column("name", S(length=200), nullable=False),
        sa.Column("purpose", S(length=128), nullable=False),
        sa.Column("tree", sa.JSON(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("owner_key_id", S(length=36), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
        sa.Column("refreshed_at", TIME, nullable=True),
        sa.Column("deleted_at", TIME, nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "segment_version",
        sa.Column("segment_id", S(length=36), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("name", S(length=200), nullable=False),
        sa.Column("purpose", S(length=128), nullable=False),
        sa.Column("tree", sa.JSON(), nullable=False),
        sa.Column("changed_by", S(length=36), nullable=False),
        sa.Column("changed_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("segment_id", "version"),
    )
    op.create_table(
        "segment_member",
        sa.Column("segment_id", S(length=36), nullable=False),
        sa.Column("profile_id", S(length=36), nullable=False),
        sa.Column("entered_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("segment_id", "profile_id"),
    )
    op.create_index("ix_segment_member_profile", "segment_member", ["profile_id"])
    op.create_table(
        "segment_history",
        sa.Column("segment_id", S(length=36), nullable=False),
        sa.Column("origin_id", S(length=36), nullable=False),
        sa.Column("at", TIME, nullable=False),
        sa.Column("profile_id", S(length=36), nullable=False),
        sa.Column("change", S(length=8), nullable=False),
        sa.PrimaryKeyConstraint("segment_id", "origin_id", "at"),
    )
    op.create_index("ix_segment_history_profile", "segment_history", ["profile_id"])
    op.create_table(
        "segment_size",
        sa.Column("segment_id", S(length=36), nullable=False),
        sa.Column("at", TIME, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("members", sa.Integer(), nullable=False),
        sa.Column("usable", sa.Integer(), nullable=False),
        sa.Column("entered", sa.Integer(), nullable=False),
        sa.Column("left", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("segment_id", "at"),
    )
    with op.batch_alter_table("profile_field") as b:
        b.add_column(sa.Column("birth_year_index", S(length=32), nullable=True))
        b.add_column(sa.Column("birth_md_index", S(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("profile_field") as b:
        b.drop_column("birth_md_index")
        b.drop_column("birth_year_index")
    op.drop_table("segment_size")
    op.drop_index("ix_segment_history_profile", table_name="segment_history")
    op.drop_table("segment_history")
    op.drop_index("ix_segment_member_profile", table_name="segment_member")
    op.drop_table("segment_member")
    op.drop_table("segment_version")
    op.drop_table("segment")
