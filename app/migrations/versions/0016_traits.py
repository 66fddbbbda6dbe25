"""computed traits: one value per surviving person and trait

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-26

``trait_value`` holds each computed trait's value (``{"v": VALUE}``) per surviving profile,
recomputed by the ``traits.refresh`` job and for touched people (personal data, plain:
derived from non-personal event properties only; see ``app/traits/service.py``);
``trait_pair`` is bought-together's item-to-item table (items and counts, no person).
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

import app.db

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

S = sqlmodel.sql.sqltypes.AutoString
TIME = app.db.UtcDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "trait_value",
        sa.Column("profile_id", S(length=36), nullable=False),
        sa.Column("name", S(length=64), nullable=False),
        sa.Column("value", sa.JSON(), nullable=False),
        sa.Column("computed_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("profile_id", "name"),
    )
    op.create_index("ix_trait_value_name", "trait_value", ["name", "profile_id"])
    op.create_table(
        "trait_pair",
        sa.Column("trait", S(length=64), nullable=False),
        sa.Column("item", S(length=200), nullable=False),
        sa.Column("other", S(length=200), nullable=False),
        sa.Column("co", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("trait", "item", "other"),
    )


def downgrade() -> None:
    op.drop_table("trait_pair")
    op.drop_index("ix_trait_value_name", table_name="trait_value")
    op.drop_table("trait_value")
