"""privacy flags that lapse: a minor's flag ends on the birthday that ends it

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-26

``privacy_flag.until`` (NULL: the flag stands until cleared). Decisions ignore a lapsed
flag at once; the daily retention run deletes it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import app.db

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("privacy_flag", schema=None) as batch_op:
        batch_op.add_column(sa.Column("until", app.db.UtcDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("privacy_flag", schema=None) as batch_op:
        batch_op.drop_column("until")
