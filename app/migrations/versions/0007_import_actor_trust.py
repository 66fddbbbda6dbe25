"""imports remember the trust of the key that uploaded them

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26

An upload is imported in the background; it must run with the uploading key's trust
(``client`` or ``server``), not with a default. Rows from before this revision are read
as ``client``, the cautious level.
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("import_job") as b:
        trust = sqlmodel.sql.sqltypes.AutoString(length=8)
        b.add_column(sa.Column("actor_trust", trust, nullable=False, server_default="client"))


def downgrade() -> None:
    with op.batch_alter_table("import_job") as b:
        b.drop_column("actor_trust")
