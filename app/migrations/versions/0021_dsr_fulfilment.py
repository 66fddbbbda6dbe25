"""dsr fulfilment: suppression list, access packages, completion certificates

Revision ID: 0021
Revises: 0020
Create Date: 2026-11-26

``suppressed_identifier`` holds keyed hashes (under the suppression key, never the blind
index key) of erased people's identifiers; ``dsr_package`` the access packages waiting to be
downloaded (by token hash); ``dsr_certificate`` the signed completion certificates. None of
them names a person by profile id. ``ix_profile_merged_into`` finds the profiles merged into a
person without scanning every profile (``person_of``, erasure and export of a person).
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

import app.db

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None

S = sqlmodel.sql.sqltypes.AutoString
TIME = app.db.UtcDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "suppressed_identifier",
        sa.Column("digest", S(length=64), nullable=False),
        sa.Column("kind", S(length=48), nullable=False),
        sa.Column("master_version", sa.Integer(), nullable=False),
        sa.Column("suppressed_at", TIME, nullable=False),
        sa.Column("request_id", S(length=64), nullable=True),
        sa.Column("refused", sa.Integer(), nullable=False),
        sa.Column("last_refused_at", TIME, nullable=True),
        sa.PrimaryKeyConstraint("digest"),
    )
    op.create_table(
        "dsr_package",
        sa.Column("token_hash", S(length=64), nullable=False),
        sa.Column("request_id", S(length=36), nullable=False),
        sa.Column("file_name", S(length=128), nullable=False),
        sa.Column("sha256", S(length=64), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("expires_at", TIME, nullable=False),
        sa.Column("downloads", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("token_hash"),
    )
    op.create_index(op.f("ix_dsr_package_request_id"), "dsr_package", ["request_id"], unique=False)
    op.create_index(op.f("ix_dsr_package_expires_at"), "dsr_package", ["expires_at"], unique=False)
    op.create_table(
        "dsr_certificate",
        sa.Column("request_id", S(length=36), nullable=False),
        sa.Column("issued_at", TIME, nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("key_id", S(length=32), nullable=False),
        sa.Column("signature", S(length=128), nullable=False),
        sa.PrimaryKeyConstraint("request_id"),
    )

    op.create_index(
        "ix_profile_merged_into",
        "profile",
        ["merged_into"],
        unique=False,
        sqlite_where=sa.text("merged_into IS NOT NULL"),
        postgresql_where=sa.text("merged_into IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_profile_merged_into", table_name="profile")
    op.drop_table("dsr_certificate")
    op.drop_index(op.f("ix_dsr_package_expires_at"), table_name="dsr_package")
    op.drop_index(op.f("ix_dsr_package_request_id"), table_name="dsr_package")
    op.drop_table("dsr_package")
    op.drop_table("suppressed_identifier")
