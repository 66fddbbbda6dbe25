"""segments speed (reserved: filled in by the change that needs it)

Revision ID: 0030
Revises: 0029
Create Date: 2026-11-26
"""

from __future__ import annotations

revision = "0030"
down_revision = "0029"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Nothing yet."""


def downgrade() -> None:
    """Nothing yet."""
