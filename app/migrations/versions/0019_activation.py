"""activation: destinations, runs, recipients (personal), files, dead letters, schedules, erasure notices

Revision ID: 0019
Revises: 0018
Create Date: 2026-11-26

A destination's secret is sealed (vault blob); ``activation_recipient`` holds who each run
sent to (personal data, registered by app/activation/holder.py); ``activation_leaves``
keeps each run's Merkle leaves (salted: they name nobody once a recipient row is erased).
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

import app.db

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

S = sqlmodel.sql.sqltypes.AutoString
TIME = app.db.UtcDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "activation_dead_letter",
        sa.Column("id", S(length=36), nullable=False),
        sa.Column("run_id", S(length=36), nullable=False),
        sa.Column("destination_id", S(length=36), nullable=False),
        sa.Column("batch", sa.Integer(), nullable=False),
        sa.Column("people", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", S(length=300), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        op.f("ix_activation_dead_letter_destination_id"), "activation_dead_letter", ["destination_id"], unique=False
    )
    op.create_index(op.f("ix_activation_dead_letter_run_id"), "activation_dead_letter", ["run_id"], unique=False)
    op.create_table(
        "activation_erasure_notice",
        sa.Column("id", S(length=36), nullable=False),
        sa.Column("request_id", S(length=64), nullable=False),
        sa.Column("destination_id", S(length=36), nullable=False),
        sa.Column("runs", sa.Integer(), nullable=False),
        sa.Column("outcome", S(length=16), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("detail", S(length=300), nullable=False),
        sa.Column("sent_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        op.f("ix_activation_erasure_notice_request_id"), "activation_erasure_notice", ["request_id"], unique=False
    )
    op.create_table(
        "activation_file",
        sa.Column("id", S(length=36), nullable=False),
        sa.Column("run_id", S(length=36), nullable=False),
        sa.Column("destination_id", S(length=36), nullable=False),
        sa.Column("path", S(length=1000), nullable=False),
        sa.Column("format", S(length=16), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("erased_lines", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_activation_file_run_id"), "activation_file", ["run_id"], unique=False)
    op.create_table(
        "activation_leaves",
        sa.Column("run_id", S(length=36), nullable=False),
        sa.Column("leaves", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("run_id"),
    )
    op.create_table(
        "activation_recipient",
        sa.Column("run_id", S(length=36), nullable=False),
        sa.Column("origin_id", S(length=36), nullable=False),
        sa.Column("profile_id", S(length=36), nullable=False),
        sa.Column("destination_id", S(length=36), nullable=False),
        sa.Column("leaf_index", sa.Integer(), nullable=False),
        sa.Column("salt", S(length=32), nullable=False),
        sa.Column("fields", sa.JSON(), nullable=False),
        sa.Column("status", S(length=8), nullable=False),
        sa.Column("batch", sa.Integer(), nullable=False),
        sa.Column("file_id", S(length=36), nullable=True),
        sa.Column("line", sa.Integer(), nullable=True),
        sa.Column("sent_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("run_id", "origin_id"),
    )
    op.create_index("ix_activation_recipient_profile", "activation_recipient", ["profile_id"], unique=False)
    op.create_table(
        "activation_run",
        sa.Column("id", S(length=36), nullable=False),
        sa.Column("destination_id", S(length=36), nullable=False),
        sa.Column("segment_id", S(length=36), nullable=True),
        sa.Column("purpose", S(length=128), nullable=False),
        sa.Column("trigger", S(length=16), nullable=False),
        sa.Column("reason", S(length=200), nullable=True),
        sa.Column("idempotency_key", S(length=200), nullable=True),
        sa.Column("status", S(length=16), nullable=False),
        sa.Column("refusal", S(length=300), nullable=True),
        sa.Column("actor_key_id", S(length=36), nullable=False),
        sa.Column("actor_role", S(length=16), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("started_at", TIME, nullable=True),
        sa.Column("finished_at", TIME, nullable=True),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("sent", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("excluded", sa.JSON(), nullable=False),
        sa.Column("policy_version", S(length=64), nullable=True),
        sa.Column("merkle_root", S(length=64), nullable=True),
        sa.Column("ledger_seq", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("idempotency_key"),
    )
    op.create_index(op.f("ix_activation_run_destination_id"), "activation_run", ["destination_id"], unique=False)
    op.create_table(
        "activation_schedule",
        sa.Column("id", S(length=36), nullable=False),
        sa.Column("segment_id", S(length=36), nullable=False),
        sa.Column("destination_id", S(length=36), nullable=False),
        sa.Column("cron", S(length=100), nullable=False),
        sa.Column("owner_key_id", S(length=36), nullable=False),
        sa.Column("owner_role", S(length=16), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("last_slot", TIME, nullable=True),
        sa.Column("deleted_at", TIME, nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "destination",
        sa.Column("id", S(length=36), nullable=False),
        sa.Column("name", S(length=200), nullable=False),
        sa.Column("kind", S(length=16), nullable=False),
        sa.Column("purpose", S(length=128), nullable=False),
        sa.Column("categories", sa.JSON(), nullable=False),
        sa.Column("cross_border", sa.Boolean(), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("secret_version", sa.Integer(), nullable=True),
        sa.Column("secret", sa.LargeBinary(), nullable=True),
        sa.Column("owner_key_id", S(length=36), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
        sa.Column("deleted_at", TIME, nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("destination")
    op.drop_table("activation_schedule")
    op.drop_table("activation_run")
    op.drop_table("activation_recipient")
    op.drop_table("activation_leaves")
    op.drop_table("activation_file")
    op.drop_table("activation_erasure_notice")
    op.drop_table("activation_dead_letter")
