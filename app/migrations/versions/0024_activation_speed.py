"""activation speed: resumable runs, and the journeys' event scan by time of receipt

A run now says which process carries it out (``owner``, a random token), when that process
last showed it was alive (``heartbeat_at``) and how many times it was taken (``attempts``):
a run whose process died is taken over and finished (``app.activation.runs.resume_stale``).
The journeys read events accepted since their cursor (``received_at``): an index on
``(received_at, id)`` makes that a range read instead of a scan of every event.

Revision ID: 0024
Revises: 0023
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

import app.db

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None

S = sqlmodel.sql.sqltypes.AutoString
TIME = app.db.UtcDateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("activation_run") as batch:
        batch.add_column(sa.Column("owner", S(length=32), nullable=True))
        batch.add_column(sa.Column("heartbeat_at", TIME, nullable=True))
        batch.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
    op.create_index("ix_activation_run_status", "activation_run", ["status", "heartbeat_at"], unique=False)
    op.create_index("ix_event_received", "event", ["received_at", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_event_received", table_name="event")
    op.drop_index("ix_activation_run_status", table_name="activation_run")
    with op.batch_alter_table("activation_run") as batch:
        batch.drop_column("attempts")
        batch.drop_column("heartbeat_at")
        batch.drop_column("owner")
