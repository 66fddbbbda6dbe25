"""entries that name many subjects (one per group or batch), indexed by subject

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-26

Reserved for ledger (lead); filled in by the change that needs it.
"""

from __future__ import annotations

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
