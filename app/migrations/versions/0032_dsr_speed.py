"""dsr speed (reserved: filled in by the change that needs it)

Revision ID: 0032
Revises: 0031
Create Date: 2026-11-26
"""

from __future__ import annotations

revision = "0032"
down_revision = "0031"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Nothing yet."""


def downgrade() -> None:
    """Nothing yet."""
