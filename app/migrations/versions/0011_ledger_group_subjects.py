"""ledger group entries: one entry for many subjects, indexed by subject

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-26

A group entry (an ingested batch, a bulk consent write) records its subjects' count and
digest in its hashed details; ``audit_subject`` lists the subjects, so every entry about
a person is found by their id, and the verifier checks the list against the digest.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_subject",
        sa.Column("subject_id", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.PrimaryKeyConstraint("subject_id", "seq"),
    )


def downgrade() -> None:
    op.drop_table("audit_subject")
