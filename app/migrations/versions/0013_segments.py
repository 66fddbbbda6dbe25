"""segments, memberships and computed traits (issue 11)

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-26

Reserved for segments (helper); filled in by the change that needs it.
"""

from __future__ import annotations

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
