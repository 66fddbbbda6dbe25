"""identity trust, row origins, identity claims, reversible merges

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26

Every personal row gains ``origin_id`` (the profile it was written for, whose key seals
it), so merges move rows without re-encrypting or dropping them and unmerges move them
back. Identifiers, profile fields and the text vault are keyed by origin. Ingest keys get
a trust level; identifiers and fields remember the trust of the source that wrote them.
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

import app.db

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

S = sqlmodel.sql.sqltypes.AutoString
TIME = app.db.UtcDateTime(timezone=True)


def _rebuild(name: str, columns: list[sa.Column], pk: list[str], copy: str, pk_name: str) -> None:
    """Recreate a table with a new primary key, copying rows with ``copy`` (a SELECT list)."""
    op.create_table(f"{name}_new", *columns, sa.PrimaryKeyConstraint(*pk, name=f"{name}_{pk_name}"))
    names = ", ".join(c.name for c in columns)
    op.execute(f"INSERT INTO {name}_new ({names}) SELECT {copy} FROM {name}")
    op.drop_table(name)
    op.rename_table(f"{name}_new", name)


def upgrade() -> None:
    with op.batch_alter_table("api_key") as b:
        b.add_column(sa.Column("trust", S(length=8), nullable=False, server_default="client"))
    for table in ("event", "consent_signal", "text_record"):
        with op.batch_alter_table(table) as b:
            b.add_column(sa.Column("origin_id", S(length=36), nullable=True))
        op.execute(f"UPDATE {table} SET origin_id = profile_id")
        with op.batch_alter_table(table) as b:
            b.alter_column("origin_id", existing_type=S(length=36), nullable=False)
    with op.batch_alter_table("profile_merge") as b:
        b.add_column(sa.Column("displaced", sa.JSON(), nullable=False, server_default="{}"))
        b.add_column(sa.Column("unmerged_at", TIME, nullable=True))

    op.drop_index("ix_identifier_lookup", table_name="identifier")
    _rebuild(
        "identifier",
        [
            sa.Column("origin_id", S(length=36), nullable=False),
            sa.Column("kind", S(length=48), nullable=False),
            sa.Column("digest", S(length=64), nullable=False),
            sa.Column("profile_id", S(length=36), nullable=False),
            sa.Column("first_seen", TIME, nullable=False),
            sa.Column("source", S(length=128), nullable=True),
            sa.Column("trust", S(length=8), nullable=False),
            sa.Column("key_version", sa.Integer(), nullable=True),
            sa.Column("sealed", sa.LargeBinary(), nullable=True),
        ],
        ["origin_id", "kind", "digest"],
        "profile_id, kind, digest, profile_id, first_seen, source, 'server', key_version, sealed",
        "by_origin_pkey",
    )
    op.create_index("ix_identifier_lookup", "identifier", ["kind", "digest"])
    op.create_index("ix_identifier_profile", "identifier", ["profile_id"])

    _rebuild(
        "profile_field",
        [
            sa.Column("origin_id", S(length=36), nullable=False),
            sa.Column("name", S(length=64), nullable=False),
            sa.Column("profile_id", S(length=36), nullable=False),
            sa.Column("category", S(length=64), nullable=False),
            sa.Column("key_version", sa.Integer(), nullable=False),
            sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
            sa.Column("updated_at", TIME, nullable=False),
            sa.Column("source", S(length=128), nullable=True),
            sa.Column("trust", S(length=8), nullable=False),
            sa.Column("observed_at", TIME, nullable=True),
        ],
        ["origin_id", "name"],
        "profile_id, name, profile_id, category, key_version, ciphertext, updated_at, source, 'server', observed_at",
        "by_origin_pkey",
    )
    op.create_index("ix_profile_field_profile_id", "profile_field", ["profile_id"])

    _rebuild(
        "text_vault",
        [
            sa.Column("text_id", S(length=36), nullable=False),
            sa.Column("placeholder", S(length=48), nullable=False),
            sa.Column("profile_id", S(length=36), nullable=False),
            sa.Column("origin_id", S(length=36), nullable=False),
            sa.Column("entity_type", S(length=32), nullable=False),
            sa.Column("key_version", sa.Integer(), nullable=False),
            sa.Column("sealed", sa.LargeBinary(), nullable=False),
        ],
        ["text_id", "placeholder"],
        "text_id, placeholder, profile_id, profile_id, entity_type, key_version, sealed",
        "by_origin_pkey",
    )
    op.create_index("ix_text_vault_profile_id", "text_vault", ["profile_id"])

    op.create_table(
        "identity_claim",
        sa.Column("id", S(length=36), nullable=False),
        sa.Column("profile_id", S(length=36), nullable=False),
        sa.Column("origin_id", S(length=36), nullable=False),
        sa.Column("kind", S(length=48), nullable=False),
        sa.Column("digest", S(length=64), nullable=False),
        sa.Column("source", S(length=128), nullable=True),
        sa.Column("rule", S(length=64), nullable=False),
        sa.Column("claimed_at", TIME, nullable=False),
        sa.Column("key_version", sa.Integer(), nullable=False),
        sa.Column("sealed", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_identity_claim_profile_id", "identity_claim", ["profile_id"])


def downgrade() -> None:
    op.drop_index("ix_identity_claim_profile_id", table_name="identity_claim")
    op.drop_table("identity_claim")
    op.drop_index("ix_text_vault_profile_id", table_name="text_vault")
    _rebuild(
        "text_vault",
        [
            sa.Column("profile_id", S(length=36), nullable=False),
            sa.Column("text_id", S(length=36), nullable=False),
            sa.Column("placeholder", S(length=48), nullable=False),
            sa.Column("entity_type", S(length=32), nullable=False),
            sa.Column("key_version", sa.Integer(), nullable=False),
            sa.Column("sealed", sa.LargeBinary(), nullable=False),
        ],
        ["profile_id", "text_id", "placeholder"],
        "profile_id, text_id, placeholder, entity_type, key_version, sealed",
        "pkey",
    )
    op.drop_index("ix_profile_field_profile_id", table_name="profile_field")
    _rebuild(
        "profile_field",
        [
            sa.Column("profile_id", S(length=36), nullable=False),
            sa.Column("name", S(length=64), nullable=False),
            sa.Column("category", S(length=64), nullable=False),
            sa.Column("key_version", sa.Integer(), nullable=False),
            sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
            sa.Column("updated_at", TIME, nullable=False),
            sa.Column("source", S(length=128), nullable=True),
            sa.Column("observed_at", TIME, nullable=True),
        ],
        ["profile_id", "name"],
        "profile_id, name, category, key_version, ciphertext, updated_at, source, observed_at",
        "pkey",
    )
    op.drop_index("ix_identifier_profile", table_name="identifier")
    op.drop_index("ix_identifier_lookup", table_name="identifier")
    _rebuild(
        "identifier",
        [
            sa.Column("profile_id", S(length=36), nullable=False),
            sa.Column("kind", S(length=48), nullable=False),
            sa.Column("digest", S(length=64), nullable=False),
            sa.Column("first_seen", TIME, nullable=False),
            sa.Column("source", S(length=128), nullable=True),
            sa.Column("key_version", sa.Integer(), nullable=True),
            sa.Column("sealed", sa.LargeBinary(), nullable=True),
        ],
        ["profile_id", "kind", "digest"],
        "profile_id, kind, digest, first_seen, source, key_version, sealed",
        "pkey",
    )
    op.create_index("ix_identifier_lookup", "identifier", ["kind", "digest"])
    with op.batch_alter_table("profile_merge") as b:
        b.drop_column("unmerged_at")
        b.drop_column("displaced")
    for table in ("event", "consent_signal", "text_record"):
        with op.batch_alter_table(table) as b:
            b.drop_column("origin_id")
    with op.batch_alter_table("api_key") as b:
        b.drop_column("trust")
