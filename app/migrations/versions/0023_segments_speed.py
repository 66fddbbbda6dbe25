"""segments performance: an index on event properties for segment conditions

Revision ID: 0023
Revises: 0022
Create Date: 2026-11-26

A segment's event condition with ``where`` equalities (``{"category": {"eq": "basketball
shoes"}}``) also compiles, on PostgreSQL, to ``properties::jsonb @> '{"category": …}'``,
which this GIN index answers (``jsonb_path_ops``: hashes of key paths and values, about
26 MB for 10,000,000 events), so the database reads the few matching events instead of
scanning every event. PostgreSQL only; SQLite has no such index and probes per person.
Kept out of the models (an expression index alembic cannot compare); see
``app/segments/sql.py`` ``json_contains``.
"""

from __future__ import annotations

from alembic import op

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None

INDEX = "ix_event_properties"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"CREATE INDEX {INDEX} ON event USING gin ((properties::jsonb) jsonb_path_ops)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP INDEX IF EXISTS {INDEX}")
