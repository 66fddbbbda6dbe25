"""dsr requests: the request, its verification codes, the demo outbox, state history, per-store steps

Revision ID: 0022
Revises: 0021
Create Date: 2026-11-26

What the requester gave is sealed under the request's own key (a ``subject_key`` row keyed by
the request id); ``dsr_request.subject_id`` and ``dsr_verification.profile_id`` name the person
(the dsr holder forgets them and keeps the minimal record).
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

import app.db

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None

S = sqlmodel.sql.sqltypes.AutoString
TIME = app.db.UtcDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "dsr_request",
        sa.Column("id", S(length=36), nullable=False),
        sa.Column("kind", S(length=24), nullable=False),
        sa.Column("regulation", S(length=8), nullable=False),
        sa.Column("jurisdiction", S(length=16), nullable=True),
        sa.Column("channel", S(length=16), nullable=False),
        sa.Column("status", S(length=16), nullable=False),
        sa.Column("received_at", TIME, nullable=False),
        sa.Column("due_at", TIME, nullable=False),
        sa.Column("ack_due_at", TIME, nullable=True),
        sa.Column("extension_latest_at", TIME, nullable=True),
        sa.Column("extended_at", TIME, nullable=True),
        sa.Column("extension_reason", S(length=500), nullable=True),
        sa.Column("waiting_since", TIME, nullable=True),
        sa.Column("waited_seconds", sa.Integer(), nullable=False),
        sa.Column("held_status", S(length=16), nullable=True),
        sa.Column("verified_at", TIME, nullable=True),
        sa.Column("closed_at", TIME, nullable=True),
        sa.Column("denial_reason", S(length=500), nullable=True),
        sa.Column("flag", S(length=16), nullable=True),
        sa.Column("subject_id", S(length=36), nullable=True),
        sa.Column("scope", S(length=32), nullable=True),
        sa.Column("field", S(length=128), nullable=True),
        sa.Column("created_by", S(length=64), nullable=True),
        sa.Column("key_version", sa.Integer(), nullable=True),
        sa.Column("sealed", sa.LargeBinary(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_dsr_request_due", "dsr_request", ["status", "due_at"], unique=False)
    op.create_index(op.f("ix_dsr_request_status"), "dsr_request", ["status"], unique=False)
    op.create_index(op.f("ix_dsr_request_subject_id"), "dsr_request", ["subject_id"], unique=False)
    op.create_table(
        "dsr_verification",
        sa.Column("id", S(length=36), nullable=False),
        sa.Column("request_id", S(length=36), nullable=False),
        sa.Column("profile_id", S(length=36), nullable=True),
        sa.Column("code_hash", S(length=64), nullable=False),
        sa.Column("expires_at", TIME, nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("matched_points", sa.Integer(), nullable=False),
        sa.Column("state", S(length=16), nullable=False),
        sa.Column("verified_at", TIME, nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_dsr_verification_request_id"), "dsr_verification", ["request_id"], unique=False)
    op.create_table(
        "dsr_outbox",
        sa.Column("id", S(length=36), nullable=False),
        sa.Column("request_id", S(length=36), nullable=False),
        sa.Column("topic", S(length=32), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("key_version", sa.Integer(), nullable=False),
        sa.Column("sealed", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_dsr_outbox_request_id"), "dsr_outbox", ["request_id"], unique=False)
    op.create_table(
        "dsr_transition",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("request_id", S(length=36), nullable=False),
        sa.Column("from_status", S(length=16), nullable=True),
        sa.Column("to_status", S(length=16), nullable=False),
        sa.Column("at", TIME, nullable=False),
        sa.Column("actor", S(length=64), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_dsr_transition_request_id"), "dsr_transition", ["request_id"], unique=False)
    op.create_table(
        "dsr_step",
        sa.Column("request_id", S(length=36), nullable=False),
        sa.Column("store", S(length=64), nullable=False),
        sa.Column("status", S(length=16), nullable=False),
        sa.Column("error_class", S(length=128), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
        sa.Column("counts", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("request_id", "store"),
    )


def downgrade() -> None:
    op.drop_table("dsr_step")
    op.drop_index(op.f("ix_dsr_transition_request_id"), table_name="dsr_transition")
    op.drop_table("dsr_transition")
    op.drop_index(op.f("ix_dsr_outbox_request_id"), table_name="dsr_outbox")
    op.drop_table("dsr_outbox")
    op.drop_index(op.f("ix_dsr_verification_request_id"), table_name="dsr_verification")
    op.drop_table("dsr_verification")
    op.drop_index(op.f("ix_dsr_request_subject_id"), table_name="dsr_request")
    op.drop_index(op.f("ix_dsr_request_status"), table_name="dsr_request")
    op.drop_index("ix_dsr_request_due", table_name="dsr_request")
    op.drop_table("dsr_request")
