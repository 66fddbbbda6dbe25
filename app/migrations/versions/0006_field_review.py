"""field review: unknown field names seen, and reviewers' decisions

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27

Field names no policy classifies are sealed as ``user.unknown`` and listed for review
(``GET /v1/fields/review``); a reviewer's decision (``POST /v1/fields/review``) applies
to every later payload. Names are stored by keyed hash, and verbatim only when the name
itself does not look personal.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import app.db

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TIME = app.db.UtcDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "field_sighting",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("key", sa.String(length=32), nullable=False),
        sa.Column("label", sa.String(length=64), nullable=False),
        sa.Column("scope", sa.String(length=32), nullable=False),
        sa.Column("seen", sa.Integer(), nullable=False),
        sa.Column("at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="field_sighting_pkey"),
    )
    op.create_index("ix_field_sighting_key", "field_sighting", ["key"])
    op.create_table(
        "field_decision",
        sa.Column("key", sa.String(length=32), nullable=False),
        sa.Column("label", sa.String(length=64), nullable=False),
        sa.Column("decision", sa.String(length=64), nullable=False),
        sa.Column("decided_by", sa.String(length=64), nullable=False),
        sa.Column("decided_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("key", name="field_decision_pkey"),
    )


def downgrade() -> None:
    op.drop_table("field_decision")
    op.drop_index("ix_field_sighting_key", table_name="field_sighting")
    op.drop_table("field_sighting")
