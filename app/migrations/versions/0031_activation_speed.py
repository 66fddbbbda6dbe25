"""activation speed (reserved: filled in by the change that needs it)

Revision ID: 0031
Revises: 0030
Create Date: 2026-11-26
"""

from __future__ import annotations

revision = "0031"
down_revision = "0030"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Nothing yet."""


def downgrade() -> None:
    """Nothing yet."""
