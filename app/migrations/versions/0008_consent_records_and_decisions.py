"""consent records, current states, privacy flags; GPC on device ids; coarse region

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26

Consent is an append-only history (``consent_record``) with the current choice per profile
of origin and purpose (``consent_state``) and standing flags (``privacy_flag``). A GPC
signal is kept on the device or browser id it came with (``identifier.gpc_at``), so it
follows that id to whoever holds it. ``profile.region`` is the coarse, non-personal region
that picks a person's privacy regime.
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

import app.db

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

S = sqlmodel.sql.sqltypes.AutoString
TIME = app.db.UtcDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "consent_record",
        sa.Column("id", S(length=36), nullable=False),
        sa.Column("profile_id", S(length=36), nullable=False),
        sa.Column("origin_id", S(length=36), nullable=False),
        sa.Column("purpose", S(length=128), nullable=False),
        sa.Column("state", S(length=16), nullable=False),
        sa.Column("legal_basis", S(length=32), nullable=True),
        sa.Column("jurisdiction", S(length=16), nullable=True),
        sa.Column("method", S(length=16), nullable=False),
        sa.Column("source", S(length=128), nullable=False),
        sa.Column("notice_version", S(length=64), nullable=True),
        sa.Column("decided_at", TIME, nullable=False),
        sa.Column("received_at", TIME, nullable=False),
        sa.Column("expires_at", TIME, nullable=True),
        sa.Column("client_id", S(length=128), nullable=True),
        sa.Column("applied", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("source", "client_id", name="uq_consent_record_client"),
    )
    op.create_index("ix_consent_record_profile", "consent_record", ["profile_id", "purpose"])
    op.create_table(
        "consent_state",
        sa.Column("origin_id", S(length=36), nullable=False),
        sa.Column("purpose", S(length=128), nullable=False),
        sa.Column("profile_id", S(length=36), nullable=False),
        sa.Column("state", S(length=16), nullable=False),
        sa.Column("method", S(length=16), nullable=False),
        sa.Column("decided_at", TIME, nullable=False),
        sa.Column("received_at", TIME, nullable=False),
        sa.Column("expires_at", TIME, nullable=True),
        sa.Column("record_id", S(length=36), nullable=False),
        sa.PrimaryKeyConstraint("origin_id", "purpose"),
    )
    op.create_index("ix_consent_state_profile_id", "consent_state", ["profile_id"])
    op.create_table(
        "privacy_flag",
        sa.Column("origin_id", S(length=36), nullable=False),
        sa.Column("flag", S(length=32), nullable=False),
        sa.Column("profile_id", S(length=36), nullable=False),
        sa.Column("set_at", TIME, nullable=False),
        sa.Column("source", S(length=128), nullable=False),
        sa.PrimaryKeyConstraint("origin_id", "flag"),
    )
    op.create_index("ix_privacy_flag_profile_id", "privacy_flag", ["profile_id"])
    with op.batch_alter_table("identifier") as b:
        b.add_column(sa.Column("gpc_at", TIME, nullable=True))
    with op.batch_alter_table("profile") as b:
        b.add_column(sa.Column("region", S(length=8), nullable=True))
    op.create_index("ix_profile_region", "profile", ["region"])


def downgrade() -> None:
    op.drop_index("ix_profile_region", table_name="profile")
    with op.batch_alter_table("profile") as b:
        b.drop_column("region")
    with op.batch_alter_table("identifier") as b:
        b.drop_column("gpc_at")
    op.drop_index("ix_privacy_flag_profile_id", table_name="privacy_flag")
    op.drop_table("privacy_flag")
    op.drop_index("ix_consent_state_profile_id", table_name="consent_state")
    op.drop_table("consent_state")
    op.drop_index("ix_consent_record_profile", table_name="consent_record")
    op.drop_table("consent_record")
