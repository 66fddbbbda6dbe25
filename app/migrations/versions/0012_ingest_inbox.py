"""the durable ingest inbox and its processor (issue 9)

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-26

Reserved for ingest (helper); filled in by the change that needs it.
"""

from __future__ import annotations

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
