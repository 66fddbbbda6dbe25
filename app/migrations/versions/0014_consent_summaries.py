"""per-person consent summaries for the population predicate (issue 10)

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-26

Reserved for consent (lead); filled in by the change that needs it.
"""

from __future__ import annotations

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
