"""dsr more: the service's own wrapped secrets (the suppression list's key); paused days

Revision ID: 0026
Revises: 0025
Create Date: 2026-11-26

``wrapped_secret`` holds keys of the service itself, each only wrapped under a master key
version and re-wrapped by ``consentry keys rotate`` like the data keys. The suppression list
hashes under one of them, so its entries keep matching after the master version that was
active at the erasure is retired. It names nobody.

``dsr_request.paused_days`` / ``paused_working_days``: the days a request's clock stood still
while waiting for the requester, counted as its regulation counts (its deadlines are
recomputed from the receipt with them, never moved by wall-clock time).
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

import app.db

revision = "0026"
down_revision = "0025"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "wrapped_secret",
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("master_version", sa.Integer(), nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", app.db.UtcDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    with op.batch_alter_table("dsr_request") as batch:
        batch.add_column(sa.Column("paused_days", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("paused_working_days", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("dsr_request") as batch:
        batch.drop_column("paused_working_days")
        batch.drop_column("paused_days")
    op.drop_table("wrapped_secret")
